//! Signed blob URLs for the calls Ferry makes through Microsoft's typed client
//! (`azure_storage_blob`): page blobs (`page_blob.rs`) and blob leases (`azure.rs`).
//!
//! A configured SAS token is used as it is; any other credential has `object_store` sign each
//! URL for one blob, one kind of call (the HTTP method: PUT also covers lease calls) and a
//! bounded time (a service SAS from an account key, a user delegation SAS from an identity).
//! The signature never leaves this module's callers: their errors pass through
//! [`crate::azure::redact`].

use azure_core::http::Url;
use object_store::path::Path as StorePath;
use object_store::signer::Signer;
use std::time::Duration;

use crate::azure::{concise, redact, store_builder};
use crate::config::{AzureCredentialConfig, AzureTargetConfig};
use crate::{Operation, StorageError};

/// Signs URLs of blobs in one container.
pub(crate) struct BlobSigner {
    container_url: String,
    signing: Signing,
}

enum Signing {
    Token(String),
    Signer(object_store::azure::MicrosoftAzure),
}

impl std::fmt::Debug for BlobSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSigner")
            .field("container_url", &self.container_url)
            .finish_non_exhaustive()
    }
}

impl BlobSigner {
    pub(crate) fn new(config: &AzureTargetConfig, container: &str) -> Result<Self, String> {
        let signing = match &config.credential {
            AzureCredentialConfig::Sas { token } => Signing::Token(token.expose().trim_start_matches('?').to_string()),
            _ => Signing::Signer(
                store_builder(config, container)
                    .build()
                    .map_err(|e| concise(&redact(&e.to_string())))?,
            ),
        };
        Ok(Self {
            container_url: format!("{}/{container}", config.account_url()),
            signing,
        })
    }

    /// The URL of blob `name`, signed for `method` for `valid_for`.
    pub(crate) async fn url(
        &self,
        name: &str,
        method: reqwest::Method,
        valid_for: Duration,
    ) -> Result<Url, StorageError> {
        let invalid = |message: String| StorageError::Permanent {
            operation: Operation::Put,
            name: name.to_string(),
            kind: crate::PermanentKind::InvalidRequest,
            message,
        };
        let url = match &self.signing {
            Signing::Token(token) => format!("{}/{name}?{token}", self.container_url),
            Signing::Signer(store) => {
                let path = StorePath::parse(name).map_err(|e| invalid(e.to_string()))?;
                store
                    .signed_url(method, &path, valid_for)
                    .await
                    .map_err(|e| StorageError::Transient {
                        operation: Operation::Put,
                        name: name.to_string(),
                        message: concise(&redact(&e.to_string())),
                    })?
                    .to_string()
            }
        };
        Url::parse(&url).map_err(|e| invalid(redact(&e.to_string())))
    }
}

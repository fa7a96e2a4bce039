//! Fuzzes unsealing: no input may panic it or make it allocate without bound, and nothing
//! but a genuine sealing under this key and name may open.
#![no_main]

use ferry_format::seal::Unsealer;
use ferry_format::{Keyring, VaultKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Keyring::new(VaultKey::from_bytes([7; 32]), uuid::Uuid::from_u128(1)).disk_key(uuid::Uuid::from_u128(2));
    let _ = Unsealer::new().unseal(&key, "ferry/v1/disks/00000000-0000-0000-0000-000000000002/disk.fseal", data);
});

//! Fixed VHD (Microsoft's Virtual Hard Disk Image Format Specification, 2006): the disk's bytes
//! followed by a 512-byte footer. The form Azure makes a managed disk from (a page blob holding
//! a fixed VHD), and a file any hypervisor opens.
//!
//! Owns the footer: building it for a disk size ([`Footer::for_disk`], [`Footer::to_bytes`]),
//! and reading one back with every check ([`Footer::parse`]), which tests and `ferryctl` use
//! to verify an output. Azure wants the virtual size a whole number of MiB, so it is the disk's
//! size rounded up to a MiB (and at least [`MIN_VIRTUAL_SIZE`]); the bytes past the disk read
//! zeros.
//!
//! A note for readers of the files with qemu: qemu sizes a VHD by its CHS geometry unless the
//! creator application is one it knows to use the footer's size (Hyper-V's `win `, Azure's,
//! ...). CHS geometry rounds down, so `qemu-img` should be told to use the footer's size:
//! `--image-opts driver=vpc,force_size_calc=current_size,file.filename=disk.vhd`.

use anyhow::{bail, Result};
use uuid::Uuid;

pub const FOOTER_LEN: usize = 512;
/// Azure's smallest managed disk from a VHD.
pub const MIN_VIRTUAL_SIZE: u64 = 20 << 20;
const MIB: u64 = 1 << 20;
const COOKIE: &[u8; 8] = b"conectix";
/// Bit 1 ("reserved", must be set); no other feature.
const FEATURES: u32 = 2;
const FORMAT_VERSION: u32 = 0x0001_0000;
/// A fixed disk has no dynamic header.
const FIXED_DATA_OFFSET: u64 = u64::MAX;
pub const CREATOR_APPLICATION: &[u8; 4] = b"frry";
const CREATOR_VERSION: u32 = 0x0001_0000;
/// "Wi2k": the host OS Azure's own tools write.
const CREATOR_HOST_OS: u32 = 0x5769_326B;
const DISK_TYPE_FIXED: u32 = 2;
/// 2000-01-01T00:00:00Z, the VHD epoch, in Unix seconds.
const VHD_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// The size a disk of `size_bytes` has as a fixed VHD: rounded up to a whole MiB, at least
/// [`MIN_VIRTUAL_SIZE`].
pub fn virtual_size(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(MIB).saturating_mul(MIB).max(MIN_VIRTUAL_SIZE)
}

/// Cylinders, heads, sectors per track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The specification's algorithm (appendix "CHS Calculation"), for `size_bytes / 512`
    /// sectors, capped at 65535 x 16 x 255 sectors (the rest of a larger disk is still
    /// addressed through the footer's size).
    pub fn for_size(size_bytes: u64) -> Self {
        let total_sectors = (size_bytes / 512).min(65_535 * 16 * 255);
        let (sectors_per_track, heads, cylinder_times_heads);
        if total_sectors >= 65_535 * 16 * 63 {
            sectors_per_track = 255;
            heads = 16;
            cylinder_times_heads = total_sectors / sectors_per_track;
        } else {
            let mut spt = 17;
            let mut cth = total_sectors / spt;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total_sectors / spt;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total_sectors / spt;
            }
            (sectors_per_track, heads, cylinder_times_heads) = (spt, h, cth);
        }
        Geometry {
            cylinders: (cylinder_times_heads / heads) as u16,
            heads: heads as u8,
            sectors_per_track: sectors_per_track as u8,
        }
    }
}

/// The fields of a fixed VHD footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    pub creator_application: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub unique_id: Uuid,
}

impl Footer {
    /// The footer of a disk of `size_bytes` (its virtual size is [`virtual_size`]), made at
    /// `now_unix_ms`.
    pub fn for_disk(size_bytes: u64, now_unix_ms: u64, unique_id: Uuid) -> Self {
        let size = virtual_size(size_bytes);
        Footer {
            timestamp: (now_unix_ms / 1000)
                .saturating_sub(VHD_EPOCH_UNIX_SECS)
                .min(u32::MAX as u64) as u32,
            creator_application: *CREATOR_APPLICATION,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            unique_id,
        }
    }

    pub fn to_bytes(&self) -> [u8; FOOTER_LEN] {
        let mut footer = [0u8; FOOTER_LEN];
        footer[0..8].copy_from_slice(COOKIE);
        footer[8..12].copy_from_slice(&FEATURES.to_be_bytes());
        footer[12..16].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        footer[16..24].copy_from_slice(&FIXED_DATA_OFFSET.to_be_bytes());
        footer[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        footer[28..32].copy_from_slice(&self.creator_application);
        footer[32..36].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
        footer[36..40].copy_from_slice(&CREATOR_HOST_OS.to_be_bytes());
        footer[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        footer[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        footer[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        footer[58] = self.geometry.heads;
        footer[59] = self.geometry.sectors_per_track;
        footer[60..64].copy_from_slice(&DISK_TYPE_FIXED.to_be_bytes());
        footer[68..84].copy_from_slice(self.unique_id.as_bytes());
        // 84: saved state 0; 85..512 reserved, zero.
        let checksum = checksum(&footer);
        footer[64..68].copy_from_slice(&checksum.to_be_bytes());
        footer
    }

    /// Reads a fixed VHD footer, checking the cookie, version, data offset, disk type, sizes,
    /// geometry and checksum; the error says which is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != FOOTER_LEN {
            bail!("a VHD footer is {FOOTER_LEN} bytes, got {}", bytes.len());
        }
        let u32_at = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| (u64::from(u32_at(at)) << 32) | u64::from(u32_at(at + 4));
        if &bytes[0..8] != COOKIE {
            bail!(
                "no VHD footer: the cookie is {:?}, not \"conectix\"",
                String::from_utf8_lossy(&bytes[0..8])
            );
        }
        let stored = u32_at(64);
        let mut without = [0u8; FOOTER_LEN];
        without.copy_from_slice(bytes);
        without[64..68].fill(0);
        if checksum(&without) != stored {
            bail!(
                "the VHD footer's checksum {stored:#010x} does not match its bytes ({:#010x})",
                checksum(&without)
            );
        }
        if u32_at(8) & 2 == 0 || u32_at(12) != FORMAT_VERSION {
            bail!(
                "VHD features {:#x} / version {:#010x} are not a VHD 1.0 footer",
                u32_at(8),
                u32_at(12)
            );
        }
        if u32_at(60) != DISK_TYPE_FIXED || u64_at(16) != FIXED_DATA_OFFSET {
            bail!(
                "not a fixed VHD (disk type {}, data offset {:#x})",
                u32_at(60),
                u64_at(16)
            );
        }
        let geometry = Geometry {
            cylinders: u16::from_be_bytes([bytes[56], bytes[57]]),
            heads: bytes[58],
            sectors_per_track: bytes[59],
        };
        let current_size = u64_at(48);
        if geometry != Geometry::for_size(current_size) {
            bail!("the VHD geometry {geometry:?} is not the specification's for {current_size} bytes");
        }
        let mut creator_application = [0u8; 4];
        creator_application.copy_from_slice(&bytes[28..32]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&bytes[68..84]);
        Ok(Footer {
            timestamp: u32_at(24),
            creator_application,
            original_size: u64_at(40),
            current_size,
            geometry,
            unique_id: Uuid::from_bytes(unique_id),
        })
    }
}

/// The ones' complement of the sum of the footer's bytes (its checksum field counted as zero).
fn checksum(footer: &[u8; FOOTER_LEN]) -> u32 {
    !footer.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_sizes_are_whole_mib_and_at_least_20_mib() {
        assert_eq!(virtual_size(1), MIN_VIRTUAL_SIZE);
        assert_eq!(virtual_size(20 << 20), 20 << 20);
        assert_eq!(virtual_size((1 << 30) + 512), (1 << 30) + MIB);
        assert_eq!(virtual_size(1 << 30), 1 << 30);
    }

    #[test]
    fn geometry_follows_the_specification() {
        // Worked by hand from the specification's algorithm.
        // 20 MiB = 40960 sectors: 17 per track, 2409 cylinder-heads, 4 heads, 602 cylinders.
        assert_eq!(
            Geometry::for_size(20 << 20),
            Geometry {
                cylinders: 602,
                heads: 4,
                sectors_per_track: 17
            }
        );
        // 1 GiB = 2097152 sectors: 17 gives 121 heads (> 16), 31 gives 67650 >= 16384, so 63:
        // 33288 cylinder-heads, 2080 cylinders.
        assert_eq!(
            Geometry::for_size(1 << 30),
            Geometry {
                cylinders: 2080,
                heads: 16,
                sectors_per_track: 63
            }
        );
        // At and past 65535 x 16 x 63 sectors: 255 per track; past the cap, the cap.
        assert_eq!(Geometry::for_size(65_535 * 16 * 63 * 512).sectors_per_track, 255);
        assert_eq!(
            Geometry::for_size(4 << 40),
            Geometry {
                cylinders: 65_535,
                heads: 16,
                sectors_per_track: 255
            }
        );
    }

    #[test]
    fn footers_round_trip_and_every_damage_is_named() {
        let id = Uuid::from_u128(0x1234);
        let footer = Footer::for_disk(1_000_000_000, 1_800_000_000_000, id);
        assert_eq!(footer.current_size, 954 * MIB);
        assert_eq!(footer.timestamp as u64, 1_800_000_000 - VHD_EPOCH_UNIX_SECS);
        let bytes = footer.to_bytes();
        assert_eq!(&bytes[0..8], b"conectix");
        assert_eq!(&bytes[16..24], &[0xff; 8]);
        assert_eq!(&bytes[28..32], b"frry");
        assert_eq!(Footer::parse(&bytes).unwrap(), footer);

        let mut flipped = bytes;
        flipped[100] ^= 1;
        assert!(Footer::parse(&flipped).unwrap_err().to_string().contains("checksum"));
        let mut dynamic = bytes;
        dynamic[63] = 3;
        dynamic[64..68].fill(0);
        let sum = checksum(&dynamic);
        dynamic[64..68].copy_from_slice(&sum.to_be_bytes());
        assert!(Footer::parse(&dynamic)
            .unwrap_err()
            .to_string()
            .contains("not a fixed VHD"));
        assert!(Footer::parse(&bytes[..511]).is_err());
        assert!(Footer::parse(&[0u8; 512]).unwrap_err().to_string().contains("cookie"));
    }
}

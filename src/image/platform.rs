//! Platforms (`linux/amd64`, `linux/arm64`): what an image's config says it runs on, what an
//! index entry is labelled with, and what `--platform` asks for. Two platforms match when
//! their OS and architecture are the same and their variants do not differ (`linux/arm64`
//! is `linux/arm64/v8`, the only arm64 variant images carry). A root filesystem's platform is
//! read from its ELF binaries.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{oci_architecture, ImageConfig};
use crate::error::{Error, Result};

/// How each architecture `--platform` accepts (its Go/OCI name) shows in ELF executables, and
/// the name of its qemu-user emulator.
pub struct ElfMachine {
    pub architecture: &'static str,
    pub qemu: &'static str,
    /// The ELF class: 1 for 32-bit, 2 for 64-bit.
    pub class: u8,
    pub big_endian: bool,
    /// `e_machine`.
    pub machine: u16,
}

pub const ELF_MACHINES: &[ElfMachine] = &[
    elf_machine("amd64", "x86_64", 2, false, 0x3e),
    elf_machine("arm64", "aarch64", 2, false, 0xb7),
    elf_machine("arm", "arm", 1, false, 0x28),
    elf_machine("386", "i386", 1, false, 0x03),
    elf_machine("ppc64le", "ppc64le", 2, false, 0x15),
    elf_machine("s390x", "s390x", 2, true, 0x16),
    elf_machine("riscv64", "riscv64", 2, false, 0xf3),
];

const fn elf_machine(
    architecture: &'static str,
    qemu: &'static str,
    class: u8,
    big_endian: bool,
    machine: u16,
) -> ElfMachine {
    ElfMachine {
        architecture,
        qemu,
        class,
        big_endian,
        machine,
    }
}

impl ElfMachine {
    pub fn of(architecture: &str) -> Option<&'static Self> {
        ELF_MACHINES.iter().find(|m| m.architecture == architecture)
    }
}

/// The architectures `--platform` accepts, for messages.
pub(crate) fn architectures() -> String {
    ELF_MACHINES
        .iter()
        .map(|m| m.architecture)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An OS, an architecture and maybe a variant, as OCI index entries and configs carry them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on this machine's architecture: what fnbuild builds for unless told otherwise.
    pub fn this_machine() -> Self {
        Self {
            architecture: oci_architecture().to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }

    /// The platform an image's config says it is for.
    pub fn of_config(config: &ImageConfig) -> Self {
        Self {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config
                .other
                .get("variant")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }

    /// The platform of a root filesystem: the architecture its `env` (else `sh`) binary is
    /// built for, read from the ELF header's `e_machine`. Images of it carry no variant
    /// (`linux/arm64`, as [`Platform::this_machine`] has none either).
    pub fn of_root_filesystem(root: &Path) -> Result<Self> {
        let candidates = ["usr/bin/env", "bin/env", "usr/bin/sh", "bin/sh"];
        let binary = candidates
            .iter()
            .find_map(|path| {
                let found = crate::rootfs::find_in_root(root, Path::new(path)).ok()??;
                found.is_file().then_some(found)
            })
            .ok_or_else(|| {
                Error::Usage(format!(
                    "rootfs:{}: cannot tell its architecture: none of /{} is there to read",
                    root.display(),
                    candidates.join(", /")
                ))
            })?;
        let mut header = [0u8; 20];
        let read = std::fs::File::open(&binary)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header));
        let architecture = read
            .ok()
            .and_then(|()| elf_architecture(&header))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "rootfs:{}: cannot tell its architecture: {} is not an ELF binary of a \
                     known architecture ({})",
                    root.display(),
                    binary.display(),
                    architectures()
                ))
            })?;
        Ok(Self {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
        })
    }

    /// Whether `self` and `other` name the same platform (see the module doc on variants).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normalized_variant() == other.normalized_variant()
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, variant) => variant,
        }
    }

    /// Parses a comma-separated `--platform` value (`linux/amd64,linux/arm64`); a platform
    /// named twice counts once.
    pub fn parse_list(value: &str) -> Result<Vec<Self>> {
        let mut platforms: Vec<Self> = Vec::new();
        for part in value.split(',').map(str::trim) {
            let platform: Self = part.parse()?;
            if !platforms.iter().any(|p| p.matches(&platform)) {
                platforms.push(platform);
            }
        }
        Ok(platforms)
    }
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::Usage(format!(
                "platform '{s}': {why}; expected OS/ARCH[/VARIANT] such as linux/amd64 or \
                 linux/arm64, ARCH one of {}",
                architectures()
            ))
        };
        let parts: Vec<&str> = s.split('/').collect();
        let (os, architecture, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] if !variant.is_empty() => (*os, *arch, Some(*variant)),
            _ => return Err(bad("it is not OS/ARCH or OS/ARCH/VARIANT".into())),
        };
        if os != "linux" {
            return Err(bad(format!("function images run on linux, not '{os}'")));
        }
        if ElfMachine::of(architecture).is_none() {
            return Err(bad(format!("unknown architecture '{architecture}'")));
        }
        Ok(Self {
            architecture: architecture.to_string(),
            os: os.to_string(),
            variant: variant.map(str::to_string),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The OCI architecture of an ELF header (its first 20 bytes): its class, byte order and
/// `e_machine` (read in that byte order).
fn elf_architecture(header: &[u8; 20]) -> Option<&'static str> {
    if header[..4] != *b"\x7fELF" {
        return None;
    }
    let bytes = [header[18], header[19]];
    let (big_endian, machine) = match header[5] {
        1 => (false, u16::from_le_bytes(bytes)),
        2 => (true, u16::from_be_bytes(bytes)),
        _ => return None,
    };
    ELF_MACHINES
        .iter()
        .find(|m| m.class == header[4] && m.big_endian == big_endian && m.machine == machine)
        .map(|m| m.architecture)
}

/// `a, b, c` of some platforms, or `none`, for messages.
pub fn list(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "none".to_string();
    }
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print() {
        for (text, arch, variant) in [
            ("linux/amd64", "amd64", None),
            ("linux/arm64", "arm64", None),
            ("linux/arm/v7", "arm", Some("v7")),
        ] {
            let p: Platform = text.parse().unwrap();
            assert_eq!(
                (p.architecture.as_str(), p.variant.as_deref()),
                (arch, variant)
            );
            assert_eq!(p.to_string(), text);
        }
        for bad in [
            "amd64",
            "linux/x86_64",
            "windows/amd64",
            "linux/arm64/",
            "a/b/c/d",
            "",
        ] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(err.is_usage(), "{bad}");
            assert!(err.to_string().contains("linux/arm64"), "{bad}: {err}");
        }
    }

    #[test]
    fn arm64_is_arm64_v8_and_lists_count_each_platform_once() {
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(v8.matches(&"linux/arm64".parse().unwrap()));
        assert!(!v8.matches(&"linux/amd64".parse().unwrap()));
        let arm7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!arm7.matches(&"linux/arm/v6".parse().unwrap()));
        let listed = Platform::parse_list("linux/amd64, linux/arm64,linux/arm64/v8").unwrap();
        assert_eq!(list(&listed), "linux/amd64, linux/arm64");
        assert!(Platform::parse_list("linux/amd64,").is_err());
    }

    #[test]
    fn a_root_filesystem_is_of_its_binaries_architecture() {
        let elf = |class: u8, machine: u16| {
            let mut header = vec![0x7f, b'E', b'L', b'F', class, 1];
            header.resize(18, 0);
            header.extend(machine.to_le_bytes());
            header.extend([0; 40]);
            header
        };
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("coreutils"), elf(2, 0xb7)).unwrap();
        // A link as the root filesystem sees it: absolute targets are inside it.
        std::os::unix::fs::symlink("/usr/bin/coreutils", bin.join("env")).unwrap();
        let p = Platform::of_root_filesystem(root.path()).unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        std::fs::write(bin.join("coreutils"), elf(2, 0x3e)).unwrap();
        let p = Platform::of_root_filesystem(root.path()).unwrap();
        assert_eq!(p.to_string(), "linux/amd64");

        std::fs::write(bin.join("coreutils"), "#!/bin/sh\n").unwrap();
        let err = Platform::of_root_filesystem(root.path()).unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("not an ELF binary"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = Platform::of_root_filesystem(empty.path()).unwrap_err();
        assert!(err.to_string().contains("/usr/bin/env"), "{err}");
    }

    #[test]
    fn a_config_names_its_platform() {
        let config: ImageConfig =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        let p = Platform::of_config(&config);
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&"linux/arm64".parse().unwrap()));
    }
}

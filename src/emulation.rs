//! Whether this machine can run another architecture's programs: through the kernel's
//! binfmt_misc, which hands an ELF file of a foreign architecture to an emulator (qemu-user)
//! registered for it. The registration must be enabled and carry the F flag: the kernel then
//! opened the emulator when it was registered, so it works inside a container's root
//! filesystem, which has no emulator of its own.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::platform::{self, ElfMachine};
use crate::image::Platform;

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// How programs of a platform run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// This machine's own architecture.
    Native,
    /// Under the emulator of a binfmt_misc registration.
    Emulated {
        registration: String,
        interpreter: PathBuf,
    },
}

/// How programs of `platform` run on this machine; an error naming what is missing, and how to
/// add it, where they cannot.
pub fn for_platform(platform: &Platform) -> Result<Emulation> {
    check(Path::new(BINFMT_MISC), platform, &Platform::this_machine())
}

/// [`for_platform`] against the binfmt_misc directory `dir`, on a machine of platform `here`.
fn check(dir: &Path, platform: &Platform, here: &Platform) -> Result<Emulation> {
    if platform.os != here.os {
        return Err(Error::Run(format!(
            "the image is for {platform}: fnbuild runs {} images only",
            here.os
        )));
    }
    if platform.architecture == here.architecture {
        return Ok(Emulation::Native);
    }
    let elf = ElfMachine::of(&platform.architecture).ok_or_else(|| {
        Error::Run(format!(
            "the image is for {platform}, whose programs fnbuild cannot recognize for \
             emulation; it emulates {}",
            platform::architectures()
        ))
    })?;
    let missing = |what: String, fix: String| {
        Error::Run(format!(
            "cannot run the {platform} image on this {here} machine: {what}. To fix it (as \
             root): {fix}"
        ))
    };
    let install = format!(
        "install qemu-user-static (e.g. apt-get install qemu-user-static), whose registrations \
         carry the F flag, or register the emulator yourself: write the line\n  {}\nto {}/register \
         (and to /etc/binfmt.d/qemu-{}.conf to keep it after a reboot)",
        elf.registration_line(),
        dir.display(),
        elf.qemu
    );
    let status = std::fs::read_to_string(dir.join("status")).map_err(|_| {
        missing(
            format!("binfmt_misc is not mounted at {}", dir.display()),
            format!(
                "mount -t binfmt_misc binfmt_misc {}, then {install}",
                dir.display()
            ),
        )
    })?;
    if status.trim() != "enabled" {
        return Err(missing(
            format!("binfmt_misc is disabled ({}/status)", dir.display()),
            format!("echo 1 > {}/status", dir.display()),
        ));
    }
    let registrations = Registration::all_in(dir)
        .into_iter()
        .filter(|r| elf.handled_by(r))
        .collect::<Vec<_>>();
    let usable = registrations.iter().find(|r| r.enabled && r.fix_binary);
    if let Some(r) = usable {
        return Ok(Emulation::Emulated {
            registration: r.name.clone(),
            interpreter: r.interpreter.clone(),
        });
    }
    let Some(found) = registrations.first() else {
        return Err(missing(
            format!("no emulator is registered for {} in binfmt_misc", elf.qemu),
            install,
        ));
    };
    let path = dir.join(&found.name);
    if !found.enabled {
        return Err(missing(
            format!(
                "the binfmt_misc registration {} is disabled",
                path.display()
            ),
            format!("echo 1 > {}", path.display()),
        ));
    }
    Err(missing(
        format!(
            "the binfmt_misc registration {} ({}) lacks the F flag, so the emulator would be \
             looked up inside the image, which has none",
            path.display(),
            found.interpreter.display()
        ),
        format!("echo -1 > {}, then {install}", path.display()),
    ))
}

/// What binfmt_misc matches of an architecture's executables.
impl ElfMachine {
    /// The first 20 bytes of an executable (`e_type` 2) or a position-independent one (3).
    fn header(&self, e_type: u16) -> Vec<u8> {
        let half = |v: u16| {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let data = if self.big_endian { 2 } else { 1 };
        let mut header = vec![0x7f, b'E', b'L', b'F', self.class, data, 1];
        header.resize(16, 0);
        header.extend(half(e_type));
        header.extend(half(self.machine));
        header
    }

    /// qemu's mask: the OS ABI byte is ignored, and `e_type` may be 2 or 3.
    fn mask(&self) -> Vec<u8> {
        let mut mask = vec![0xff; 20];
        mask[7] = 0;
        mask[if self.big_endian { 17 } else { 16 }] = 0xfe;
        mask
    }

    /// Whether the registration hands this architecture's programs to its interpreter.
    fn handled_by(&self, r: &Registration) -> bool {
        [2, 3]
            .into_iter()
            .all(|e_type| r.matches(&self.header(e_type)))
    }

    /// A binfmt_misc registration of qemu-user for it, with the F flag.
    fn registration_line(&self) -> String {
        let hex = |bytes: Vec<u8>| {
            bytes
                .iter()
                .map(|b| format!("\\x{b:02x}"))
                .collect::<String>()
        };
        format!(
            ":qemu-{q}:M::{}:{}:/usr/bin/qemu-{q}-static:F",
            hex(self.header(2)),
            hex(self.mask()),
            q = self.qemu
        )
    }
}

/// One binfmt_misc registration (a file beside `register` and `status`).
#[derive(Debug)]
struct Registration {
    name: String,
    enabled: bool,
    interpreter: PathBuf,
    fix_binary: bool,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

impl Registration {
    /// The magic-based registrations in `dir`, by name; unreadable ones are left out.
    fn all_in(dir: &Path) -> Vec<Self> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "register" && n != "status")
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(dir.join(&name)).ok()?;
                Self::parse(name, &text)
            })
            .collect()
    }

    /// A registration as the kernel shows it; `None` for one matching file name extensions.
    fn parse(name: String, text: &str) -> Option<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::trim))
        };
        let magic = hex_bytes(field("magic ")?)?;
        let mask = match field("mask ") {
            Some(mask) => hex_bytes(mask)?,
            None => vec![0xff; magic.len()],
        };
        Some(Self {
            enabled: text.lines().next() == Some("enabled"),
            interpreter: field("interpreter ").unwrap_or_default().into(),
            fix_binary: field("flags:").is_some_and(|f| f.contains('F')),
            offset: field("offset ").and_then(|o| o.parse().ok()).unwrap_or(0),
            name,
            magic,
            mask,
        })
    }

    fn matches(&self, header: &[u8]) -> bool {
        self.magic.iter().enumerate().all(|(i, m)| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            header
                .get(self.offset + i)
                .is_some_and(|b| b & mask == m & mask)
        })
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn binfmt(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn platform(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn error(dir: &Path, wanted: &str) -> String {
        check(dir, &platform(wanted), &platform("linux/amd64"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_enabled_registration_with_f_emulates() {
        let dir = binfmt(&[
            ("status", "enabled\n"),
            ("register", ""),
            ("qemu-aarch64", AARCH64),
        ]);
        let amd64 = platform("linux/amd64");
        assert_eq!(
            check(dir.path(), &platform("linux/arm64/v8"), &amd64).unwrap(),
            Emulation::Emulated {
                registration: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(),
            }
        );
        // This machine's own architecture needs nothing, not even binfmt_misc.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            check(empty.path(), &amd64, &amd64).unwrap(),
            Emulation::Native
        );
        // Another architecture is not handled by the aarch64 registration.
        let err = error(dir.path(), "linux/s390x");
        assert!(err.contains("no emulator is registered for s390x"), "{err}");
        assert!(err.contains("qemu-user-static"), "{err}");
        assert!(
            err.contains(":qemu-s390x:M::\\x7f\\x45\\x4c\\x46\\x02\\x02\\x01"),
            "{err}"
        );
    }

    #[test]
    fn what_is_missing_is_named_with_its_fix() {
        let unmounted = tempfile::tempdir().unwrap();
        let err = error(unmounted.path(), "linux/arm64");
        assert!(err.contains("linux/arm64 image"), "{err}");
        assert!(err.contains("binfmt_misc is not mounted"), "{err}");
        assert!(err.contains("mount -t binfmt_misc binfmt_misc"), "{err}");
        assert!(
            err.contains(
                ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\
                 \\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\
                 \\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:\
                 /usr/bin/qemu-aarch64-static:F"
            ),
            "{err}"
        );

        let disabled = binfmt(&[("status", "disabled\n"), ("qemu-aarch64", AARCH64)]);
        let err = error(disabled.path(), "linux/arm64");
        assert!(err.contains("binfmt_misc is disabled"), "{err}");

        let without_f = AARCH64.replace("flags: POF", "flags: P");
        let dir = binfmt(&[("status", "enabled\n"), ("qemu-aarch64", &without_f)]);
        let err = error(dir.path(), "linux/arm64");
        assert!(err.contains("lacks the F flag"), "{err}");
        assert!(err.contains("echo -1 >"), "{err}");

        let off = AARCH64.replace("enabled\n", "disabled\n");
        let dir = binfmt(&[("status", "enabled\n"), ("qemu-aarch64", &off)]);
        let err = error(dir.path(), "linux/arm64");
        assert!(
            err.contains("registration") && err.contains("is disabled"),
            "{err}"
        );
    }

    #[test]
    fn registrations_are_recognized_by_magic_not_name() {
        // Named anything, an aarch64 magic is aarch64's; an extension-based one is ignored.
        let dir = binfmt(&[
            ("status", "enabled\n"),
            ("arm64-emulator", AARCH64),
            (
                "wine",
                "enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n",
            ),
        ]);
        assert!(matches!(
            check(dir.path(), &platform("linux/arm64"), &platform("linux/amd64")).unwrap(),
            Emulation::Emulated { registration, .. } if registration == "arm64-emulator"
        ));
        // An x86_64 registration does not run arm64 programs.
        let x86 = AARCH64.replace("0200b700", "02003e00");
        let dir = binfmt(&[("status", "enabled\n"), ("qemu-x86_64", &x86)]);
        assert!(error(dir.path(), "linux/arm64").contains("no emulator is registered"));
        // And, on an arm64 machine, it runs amd64 images.
        assert!(matches!(
            check(
                dir.path(),
                &platform("linux/amd64"),
                &platform("linux/arm64")
            )
            .unwrap(),
            Emulation::Emulated { .. }
        ));
    }
}

//! Kubernetes memory quantities (`128Mi`, `1G`, `134217728`), as Kubeless's `--memory` takes
//! them. The function sees the limit in bytes in `FUNC_MEMORY_LIMIT`, as the Kubernetes
//! downward API gave it to Kubeless functions.

use crate::error::{Error, Result};

/// Bytes in a memory quantity.
pub fn memory_bytes(quantity: &str) -> Result<u64> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let bad = || {
        Error::Usage(format!(
            "--memory '{quantity}': expected a Kubernetes quantity such as 128Mi, 1Gi, 500M or a number of bytes"
        ))
    };
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((quantity, 1));
    let value: u64 = number.parse().map_err(|_| bad())?;
    match value.checked_mul(factor) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::memory_bytes;

    #[test]
    fn quantities_convert_to_bytes() {
        assert_eq!(memory_bytes("128Mi").unwrap(), 134_217_728);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(memory_bytes("4096").unwrap(), 4096);
        for bad in ["", "Mi", "12MB", "-1", "0"] {
            assert!(
                memory_bytes(bad).unwrap_err().to_string().contains("128Mi"),
                "{bad}"
            );
        }
    }
}

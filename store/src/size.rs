//! Byte sizes as people write them: `1073741824`, `512MiB`, `2GB`, `1.5 GiB`.

use std::fmt;
use std::str::FromStr;

/// A number of bytes, parsed from plain bytes or a unit (`KiB`, `MiB`, `GiB`,
/// `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000; `K`, `M`,
/// `G`, `T` are taken as binary, as most tools do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Text that is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?}: use bytes or a unit, e.g. 536870912, 512MiB, 2GB")]
pub struct InvalidSize(pub String);

impl FromStr for ByteSize {
    type Err = InvalidSize;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidSize(s.to_string());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        if num.is_empty() {
            return Err(bad());
        }
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(bad);
        }
        let f: f64 = num.parse().map_err(|_| bad())?;
        let bytes = f * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i + 1 < UNITS.len() {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("123".parse::<ByteSize>().unwrap().0, 123);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("2GB".parse::<ByteSize>().unwrap().0, 2_000_000_000);
        assert_eq!("1.5 GiB".parse::<ByteSize>().unwrap().0, 3 << 29);
        assert_eq!("4k".parse::<ByteSize>().unwrap().0, 4096);
        assert!("".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999999999".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_human() {
        assert_eq!(ByteSize(100).to_string(), "100 B");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }
}

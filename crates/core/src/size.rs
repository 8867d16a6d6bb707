use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ValidationError;

/// A byte size. Parses `512M`, `4G`, `1.5G`, `65536`, `64KiB`; binary units (K = 1024).
/// Serialises as a number of bytes; deserialises from a number or such a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(what: &str, s: &str) -> Result<Size, ValidationError> {
        let bad = || ValidationError::new(format!("{what} {s:?} is not a size (try 512M or 4G)"));
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(bad());
        }
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => return Err(bad()),
        };
        let value: f64 = num.parse().map_err(|_| bad())?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl Size {
    /// Rounded to one decimal in the largest unit that fits (`847.8M`), for reading
    /// rather than for typing back.
    pub fn approx(self) -> String {
        const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
        match UNITS.iter().find(|(_, m)| self.0 >= *m) {
            Some((u, m)) => format!("{:.1}{u}", self.0 as f64 / *m as f64),
            None => format!("{}B", self.0),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
        for (u, m) in UNITS {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        for (u, m) in UNITS {
            if self.0 >= m {
                return write!(f, "{:.1}{u}", self.0 as f64 / m as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for Size {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Size::parse("size", s)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse("size", &s).map_err(serde::de::Error::custom),
        }
    }
}

crate::scalar_schema!(Size, Integer, "bytes; input also accepts strings such as \"512M\" or \"4G\"");

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, want: Option<u64>) {
        let got = Size::parse("memory", input).ok().map(Size::bytes);
        assert_eq!(got, want, "{input}");
    }

    #[test]
    fn parse_table() {
        check("512M", Some(512 << 20));
        check("4G", Some(4 << 30));
        check("1.5G", Some(3 << 29));
        check("65536", Some(65536));
        check("64KiB", Some(64 << 10));
        check("4XB", None);
        check("", None);
        check("M", None);
        check("-1M", None);
    }

    #[test]
    fn error_names_input() {
        let e = Size::parse("memory", "4XB").unwrap_err().to_string();
        assert_eq!(e, "memory \"4XB\" is not a size (try 512M or 4G)");
    }

    #[test]
    fn display_round_trips() {
        for s in ["512M", "4G", "1K", "3B"] {
            assert_eq!(Size::parse("x", s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn serde_accepts_number_and_string() {
        let a: Size = serde_json::from_str("\"256M\"").unwrap();
        let b: Size = serde_json::from_str("268435456").unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<Size>("\"4XB\"").is_err());
    }
}

//! Resource amounts in fixed point, so that fractional requests (0.5 CPU)
//! add up and give back exactly.

use std::collections::BTreeMap;
use std::fmt;

use arca_proto::node as pb;

/// Units per whole resource: amounts are kept to 1/10,000.
const SCALE: f64 = 10_000.0;

/// Amounts by resource name. Available amounts may go below zero while a
/// worker blocked in `get` has lent its CPU to others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceSet(BTreeMap<String, i64>);

/// A resource request that cannot be represented.
#[derive(Debug, thiserror::Error)]
#[error("resource {name:?} = {amount}: amounts must be finite and at least 0")]
pub struct InvalidResource {
    /// The resource's name.
    pub name: String,
    /// What was asked.
    pub amount: f64,
}

impl ResourceSet {
    /// Builds a set from named amounts; zero amounts are left out.
    pub fn from_amounts<'a>(
        amounts: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<Self, InvalidResource> {
        let mut set = BTreeMap::new();
        for (name, amount) in amounts {
            if !amount.is_finite() || amount < 0.0 {
                return Err(InvalidResource {
                    name: name.to_string(),
                    amount,
                });
            }
            let units = (amount * SCALE).round() as i64;
            if units > 0 {
                *set.entry(name.to_string()).or_insert(0) += units;
            }
        }
        Ok(Self(set))
    }

    /// Reads a wire request; a missing request means `default`.
    pub fn from_proto(
        r: Option<&pb::Resources>,
        default: &ResourceSet,
    ) -> Result<Self, InvalidResource> {
        match r {
            None => Ok(default.clone()),
            Some(r) => Self::from_amounts(r.amounts.iter().map(|(k, v)| (k.as_str(), *v))),
        }
    }

    /// The amounts as the wire carries them.
    pub fn to_proto(&self) -> pb::Resources {
        pb::Resources {
            amounts: self
                .0
                .iter()
                .map(|(k, v)| (k.clone(), *v as f64 / SCALE))
                .collect(),
        }
    }

    /// The amount of `name`, in whole units.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |v| *v as f64 / SCALE)
    }

    /// How many requests `r` fit in this set at once (`usize::MAX` for an
    /// empty request).
    pub fn times_fits(&self, r: &ResourceSet) -> usize {
        r.0.iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (self.0.get(k).copied().unwrap_or(0).max(0) / v) as usize)
            .min()
            .unwrap_or(usize::MAX)
    }

    /// True if every amount asked for is available.
    pub fn fits(&self, request: &ResourceSet) -> bool {
        request
            .0
            .iter()
            .all(|(k, v)| self.0.get(k).is_some_and(|have| have >= v))
    }

    /// The names whose amount `request` asks for beyond what `self` holds at all.
    pub fn shortfall(&self, request: &ResourceSet) -> Vec<String> {
        request
            .0
            .iter()
            .filter(|(k, v)| self.0.get(*k).is_none_or(|have| have < *v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Takes `request` away (may go negative; see the type's docs).
    pub fn subtract(&mut self, request: &ResourceSet) {
        for (k, v) in &request.0 {
            *self.0.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Gives `request` back.
    pub fn add(&mut self, request: &ResourceSet) {
        for (k, v) in &request.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let amount = *v as f64 / SCALE;
            if k == "memory" {
                write!(f, "{k}: {}", arca_store::ByteSize(amount as u64))?;
            } else {
                write!(f, "{k}: {amount}")?;
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, f64)]) -> ResourceSet {
        ResourceSet::from_amounts(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn fractions_add_up_exactly() {
        let total = set(&[("CPU", 1.0)]);
        let mut avail = total.clone();
        let tenth = set(&[("CPU", 0.1)]);
        for _ in 0..10 {
            assert!(avail.fits(&tenth));
            avail.subtract(&tenth);
        }
        assert!(!avail.fits(&tenth));
        for _ in 0..10 {
            avail.add(&tenth);
        }
        assert_eq!(avail, total);
    }

    #[test]
    fn custom_and_missing_resources() {
        let avail = set(&[("CPU", 2.0), ("Custom", 2.0)]);
        assert!(avail.fits(&set(&[("Custom", 1.5)])));
        assert!(!avail.fits(&set(&[("GPU", 1.0)])));
        assert_eq!(
            avail.shortfall(&set(&[("GPU", 1.0), ("CPU", 3.0)])),
            ["CPU", "GPU"]
        );
        assert!(
            avail.fits(&set(&[("CPU", 0.0)])),
            "a zero request always fits"
        );
    }

    #[test]
    fn rejects_negative_and_nan() {
        assert!(ResourceSet::from_amounts([("CPU", -1.0)]).is_err());
        assert!(ResourceSet::from_amounts([("CPU", f64::NAN)]).is_err());
    }
}

//! The `VMI-TEST …` lines the guest's `/init` prints on its serial console.
//!
//! Format, one marker per line:
//!
//! ```text
//! VMI-TEST banner=Linux version 6.1.0-… (…)
//! VMI-TEST kallsyms linux_banner=ffffffff9a000100
//! VMI-TEST memtotal=215884
//! VMI-TEST ready
//! VMI-TEST tick 5
//! ```
//!
//! A line `VMI-TEST <key>=<value>` maps `<key>` to `<value>` (the key may contain spaces,
//! as in `kallsyms linux_banner`); a line without `=` maps its first word to the rest
//! (`ready` → `""`, `tick` → `"5"`). A later line with the same key replaces the earlier.

use std::collections::BTreeMap;

/// The prefix of every marker line.
pub const PREFIX: &str = "VMI-TEST ";

/// The marker `/init` prints once everything else has been printed.
pub const READY: &str = "VMI-TEST ready";

/// Parsed marker lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Markers {
    map: BTreeMap<String, String>,
}

impl Markers {
    /// Parses every marker among `lines` (other lines are ignored).
    pub fn parse<I, S>(lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut map = BTreeMap::new();
        for line in lines {
            if let Some((k, v)) = parse_line(line.as_ref()) {
                map.insert(k.to_owned(), v.to_owned());
            }
        }
        Markers { map }
    }

    /// The value of marker `key`, e.g. `get("memtotal")`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Whether the guest printed `VMI-TEST ready`.
    pub fn ready(&self) -> bool {
        self.map.contains_key("ready")
    }

    /// `/proc/version` of the guest (starts with `Linux version`).
    pub fn banner(&self) -> Option<&str> {
        self.get("banner")
    }

    /// The runtime (KASLR-shifted) address of kernel symbol `name`, from `/proc/kallsyms`.
    ///
    /// `/init` prints a fixed list of symbols; see the `kallsyms` lines of the serial log.
    pub fn kallsyms(&self, name: &str) -> Option<u64> {
        let v = self.map.get(&format!("kallsyms {name}"))?;
        u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
    }

    /// [`Markers::kallsyms`] for a symbol the test cannot do without: fails the test when
    /// the guest did not report `name`.
    pub fn symbol(&self, name: &str) -> u64 {
        self.kallsyms(name)
            .unwrap_or_else(|| panic!("the guest did not report symbol {name}"))
    }

    /// All kernel symbols the guest reported, by name.
    pub fn all_kallsyms(&self) -> BTreeMap<&str, u64> {
        self.map
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("kallsyms ")?;
                Some((name, u64::from_str_radix(v, 16).ok()?))
            })
            .collect()
    }

    /// `MemTotal` of the guest in KiB.
    pub fn memtotal_kib(&self) -> Option<u64> {
        self.get("memtotal")?.parse().ok()
    }

    /// The number of online CPUs the guest saw.
    pub fn cpus(&self) -> Option<u32> {
        self.get("cpus")?.parse().ok()
    }

    /// The highest `tick` counter seen so far.
    pub fn tick(&self) -> Option<u64> {
        self.get("tick")?.parse().ok()
    }

    /// Every marker, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Splits one serial line into a marker key and value, if it is a marker.
pub fn parse_line(line: &str) -> Option<(&str, &str)> {
    // Tolerate garbage before the marker (e.g. a kernel message without a newline).
    let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
    let rest = rest.trim_end();
    Some(match rest.split_once('=') {
        Some((k, v)) => (k.trim(), v),
        None => match rest.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (rest, ""),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers() {
        let m = Markers::parse([
            "[    0.1] noise",
            "VMI-TEST banner=Linux version 6.1.0 (a=b)",
            "VMI-TEST kallsyms linux_banner=ffffffff81e00100",
            "VMI-TEST memtotal=1234",
            "VMI-TEST tick 5",
            "VMI-TEST tick 10",
            "VMI-TEST ready\r",
        ]);
        assert_eq!(m.banner(), Some("Linux version 6.1.0 (a=b)"));
        assert_eq!(m.kallsyms("linux_banner"), Some(0xffff_ffff_81e0_0100));
        assert_eq!(m.kallsyms("init_task"), None);
        assert_eq!(m.memtotal_kib(), Some(1234));
        assert_eq!(m.tick(), Some(10));
        assert!(m.ready());
        assert_eq!(m.all_kallsyms().len(), 1);
    }
}

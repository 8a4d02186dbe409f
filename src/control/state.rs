//! The operator's overrides of the configuration (`ctl drain`, `ctl weight`)
//! and the state file that keeps them across restarts (`state_file`).
//!
//! The config file stays the operator's own text and is never rewritten: an
//! override is kept beside it, by daemon address, and wins over the config's
//! weight until cleared (`ctl undrain` clears the drain, `ctl weight ADDR
//! --reset` both). A reload keeps them; the config gives the base again.
//!
//! The file is JSON, written whole on every change by a temporary file in the
//! same directory, fsync, rename and fsync of the directory, so a crash leaves
//! the old file or the new one, never a mix.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The format this build writes and reads.
const VERSION: u32 = 1;

/// What the operator changed of one daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Override {
    /// `ctl drain` or `ctl weight ADDR 0`: no new connections.
    pub drained: bool,
    /// `ctl weight ADDR N` (N >= 1): its weight instead of the config's.
    pub weight: Option<u32>,
}

impl Override {
    pub fn is_none(&self) -> bool {
        *self == Override::default()
    }
}

/// Every daemon's override, by address; daemons without one are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides(BTreeMap<SocketAddr, Override>);

/// The file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    version: u32,
    daemons: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    daemon: SocketAddr,
    #[serde(default)]
    drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

impl Overrides {
    pub fn get(&self, daemon: SocketAddr) -> Override {
        self.0.get(&daemon).copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, Override)> + '_ {
        self.0.iter().map(|(a, o)| (*a, *o))
    }

    /// Changes `daemon`'s override; one that overrides nothing is forgotten.
    fn change(&mut self, daemon: SocketAddr, f: impl FnOnce(&mut Override)) {
        let o = self.0.entry(daemon).or_default();
        f(o);
        if o.is_none() {
            self.0.remove(&daemon);
        }
    }

    pub fn set_drained(&mut self, daemon: SocketAddr, drained: bool) {
        self.change(daemon, |o| o.drained = drained);
    }

    /// A weight of 1 or more, which undrains it (as `ctl weight` always did).
    pub fn set_weight(&mut self, daemon: SocketAddr, weight: u32) {
        self.change(daemon, |o| {
            o.weight = Some(weight);
            o.drained = false;
        });
    }

    /// Back to the config: its weight, not drained.
    pub fn clear(&mut self, daemon: SocketAddr) {
        self.0.remove(&daemon);
    }

    /// `base` with the weight overrides in place of its weights.
    pub fn weighted(&self, base: &Config) -> Config {
        let mut config = base.clone();
        for b in config
            .services
            .iter_mut()
            .flat_map(|s| s.backends.iter_mut())
        {
            if let Some(w) = self.get(b.addr.into()).weight {
                b.weight = w;
            }
        }
        for b in config
            .services6
            .iter_mut()
            .flat_map(|s| s.backends.iter_mut())
        {
            if let Some(w) = self.get(b.addr.into()).weight {
                b.weight = w;
            }
        }
        config
    }

    /// Forgets the overrides of daemons `config` does not have; returns them.
    pub fn retain_configured(&mut self, config: &Config) -> Vec<SocketAddr> {
        let configured: std::collections::HashSet<SocketAddr> =
            (config.daemons().map(|(_, _, b)| b.addr.into()))
                .chain(config.daemons6().map(|(_, _, b)| b.addr.into()))
                .collect();
        let gone: Vec<SocketAddr> = self
            .0
            .keys()
            .filter(|a| !configured.contains(a))
            .copied()
            .collect();
        for a in &gone {
            self.0.remove(a);
        }
        gone
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        let doc = StateDoc {
            version: VERSION,
            daemons: self
                .iter()
                .map(|(daemon, o)| Entry {
                    daemon,
                    drained: o.drained,
                    weight: o.weight,
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads the file's text; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Overrides, String> {
        let doc: StateDoc = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if doc.version != VERSION {
            return Err(format!(
                "version {} (this dispatchd reads version {VERSION})",
                doc.version
            ));
        }
        let mut overrides = Overrides::default();
        for e in doc.daemons {
            if e.weight == Some(0) {
                return Err(format!(
                    "daemon {}: weight 0 (a drain is written \"drained\": true)",
                    e.daemon
                ));
            }
            if overrides.0.contains_key(&e.daemon) {
                return Err(format!("daemon {} is listed twice", e.daemon));
            }
            overrides.change(e.daemon, |o| {
                o.drained = e.drained;
                o.weight = e.weight;
            });
        }
        Ok(overrides)
    }
}

/// The state file at a configured path.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("/"),
        }
    }

    /// A file beside the state file, for `what`.
    fn sibling(&self, what: &str) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        self.dir().join(format!(".{name}.{what}"))
    }

    /// The overrides the file holds; none if it does not exist (a first start).
    pub fn load(&self) -> Result<Overrides> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Overrides::default()),
            Err(e) => bail!("state file {}: cannot read: {e}", self.path.display()),
        };
        Overrides::parse(&text).map_err(|why| {
            anyhow!(
                "state file {} is not a valid dispatchd state file ({why}); dispatchd will not \
                 start without knowing which daemons the operator drained or reweighted: fix it, \
                 or remove it to start with the config's weights and nothing drained",
                self.path.display()
            )
        })
    }

    /// Writes `overrides` atomically (see the module's doc). Blocking, a few
    /// KB at most: the loop calls it only on an operator's change.
    pub fn save(&self, overrides: &Overrides) -> io::Result<()> {
        let tmp = self.sibling("tmp");
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(overrides.to_json().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        // The rename is durable once the directory is.
        fs::File::open(self.dir())?.sync_all()
    }

    /// Checks that the file can be written as dispatchd will write it: a
    /// file created, synced and removed in its directory.
    fn probe(&self) -> Result<()> {
        let dir = self.dir();
        let meta = fs::metadata(dir).with_context(|| {
            format!(
                "state file {}: its directory {}",
                self.path.display(),
                dir.display()
            )
        })?;
        if !meta.is_dir() {
            bail!(
                "state file {}: {} is not a directory",
                self.path.display(),
                dir.display()
            );
        }
        let probe = self.sibling("probe");
        let made = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&probe)
            .and_then(|f| f.sync_all());
        let _ = fs::remove_file(&probe);
        made.map_err(|e| {
            anyhow!(
                "state file {}: cannot write in {} once capabilities are dropped ({e}): \
                 dispatchd runs on without CAP_DAC_OVERRIDE, so the directory must be owned \
                 by its user (root, as a rule) and writable by its owner (e.g. mode 0755; \
                 systemd: StateDirectory=dispatchd for /var/lib/dispatchd)",
                self.path.display(),
                dir.display()
            )
        })
    }

    /// [`load`](Self::load) and the writability check, in a thread without
    /// any capability, as the running daemon will be: a directory root can
    /// write only through CAP_DAC_OVERRIDE fails here, at start, rather than
    /// at the operator's first change. Capability sets are per thread, so
    /// the caller keeps its own.
    pub fn open_unprivileged(&self) -> Result<Overrides> {
        let me = self.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                crate::sys::drop_all_capabilities()
                    .context("dropping capabilities to check the state file")?;
                me.probe()?;
                me.load()
            })
            .join()
            .map_err(|_| anyhow!("checking the state file failed"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dispatchd-ps-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_override_that_overrides_nothing_is_forgotten() {
        let mut o = Overrides::default();
        let d = a("198.19.0.11:8080");
        o.set_drained(d, true);
        o.set_weight(d, 3);
        assert_eq!(
            o.get(d),
            Override {
                drained: false,
                weight: Some(3)
            },
            "a weight undrains"
        );
        o.set_drained(d, true);
        o.set_drained(d, false);
        assert_eq!(o.len(), 1, "undrain keeps the weight");
        o.clear(d);
        assert!(o.is_empty());
        o.set_drained(d, true);
        o.set_drained(d, false);
        assert!(o.is_empty());
    }

    #[test]
    fn the_file_text_reads_back_and_bad_ones_say_why() {
        let mut o = Overrides::default();
        o.set_drained(a("198.19.0.11:8080"), true);
        o.set_weight(a("198.19.0.12:8080"), 5);
        let text = o.to_json();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert_eq!(Overrides::parse(&text), Ok(o));
        for (text, why) in [
            ("", "EOF"),
            ("{\"daemons\": []}", "missing field `version`"),
            ("{\"version\": 2, \"daemons\": []}", "version 2"),
            (
                "{\"version\": 1, \"daemons\": [{\"daemon\": \"198.19.0.11\"}]}",
                "invalid",
            ),
            (
                "{\"version\": 1, \"daemons\": [{\"daemon\": \"198.19.0.11:1\", \"weight\": 0}]}",
                "weight 0",
            ),
            (
                "{\"version\": 1, \"daemons\": [{\"daemon\": \"198.19.0.11:1\", \"drained\": true}, {\"daemon\": \"198.19.0.11:1\"}]}",
                "listed twice",
            ),
            (
                "{\"version\": 1, \"daemons\": [], \"extra\": 1}",
                "unknown field",
            ),
        ] {
            let e = Overrides::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn weights_override_the_config_and_unknown_daemons_are_dropped() {
        let base = Config::from_toml_str(
            "front = \"l0\"\nback = \"l1\"\n[[service]]\naddress = \"198.18.0.100:80\"\n\
             backends = [\"198.19.0.11:8080@2\", \"198.19.0.12:8080\"]\n",
        )
        .unwrap();
        let mut o = Overrides::default();
        o.set_weight(a("198.19.0.12:8080"), 7);
        o.set_drained(a("198.19.0.99:8080"), true);
        let w = o.weighted(&base);
        let weights: Vec<u32> = w.daemons().map(|(_, _, b)| b.weight).collect();
        assert_eq!(weights, [2, 7]);
        assert_eq!(o.retain_configured(&base), [a("198.19.0.99:8080")]);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn an_ipv6_daemon_round_trips_and_an_ipv4_only_file_still_loads() {
        let mut o = Overrides::default();
        o.set_drained(a("198.19.0.11:8080"), true);
        o.set_weight(a("[2001:2:0:2::11]:8080"), 4);
        o.set_drained(a("[2001:2:0:2::12]:8080"), true);
        let text = o.to_json();
        assert!(text.contains("\"[2001:2:0:2::11]:8080\""), "{text}");
        assert_eq!(Overrides::parse(&text), Ok(o.clone()));
        // A file as an IPv4-only dispatchd wrote it.
        let old = "{\n  \"version\": 1,\n  \"daemons\": [\n    {\n      \"daemon\": \"198.19.0.11:8080\",\n      \"drained\": true\n    },\n    {\n      \"daemon\": \"198.19.0.12:8080\",\n      \"drained\": false,\n      \"weight\": 3\n    }\n  ]\n}\n";
        let loaded = Overrides::parse(old).unwrap();
        assert!(loaded.get(a("198.19.0.11:8080")).drained);
        assert_eq!(loaded.get(a("198.19.0.12:8080")).weight, Some(3));
        assert_eq!(loaded.to_json(), old, "written back as it was");
        // An IPv6 address without brackets is no daemon.
        let e = Overrides::parse(
            "{\"version\": 1, \"daemons\": [{\"daemon\": \"2001:2:0:2::11:8080\"}]}",
        )
        .unwrap_err();
        assert!(e.contains("invalid"), "{e}");
        // Weights of IPv6 daemons override the config's, and stay while configured.
        let base = Config::from_toml_str(
            "front = \"l0\"\nback = \"l1\"\n[[service]]\naddress = \"198.18.0.100:80\"\n\
             backends = [\"198.19.0.11:8080\"]\n[[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
             backends = [\"[2001:2:0:2::11]:8080@2\", \"[2001:2:0:2::13]:8080\"]\n",
        )
        .unwrap();
        let w = o.weighted(&base);
        let weights: Vec<u32> = w.daemons6().map(|(_, _, b)| b.weight).collect();
        assert_eq!(weights, [4, 1]);
        assert_eq!(o.retain_configured(&base), [a("[2001:2:0:2::12]:8080")]);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn save_replaces_the_file_and_leaves_nothing_beside_it() {
        let dir = tmp_dir("save");
        let file = StateFile::new(dir.join("state.json"));
        assert_eq!(file.load().unwrap(), Overrides::default(), "none yet");
        let mut o = Overrides::default();
        o.set_drained(a("198.19.0.11:8080"), true);
        file.save(&o).unwrap();
        o.set_weight(a("198.19.0.12:8080"), 2);
        file.save(&o).unwrap();
        assert_eq!(file.load().unwrap(), o);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        fs::write(file.path(), "{not json").unwrap();
        let e = format!("{:#}", file.load().unwrap_err());
        assert!(
            e.contains(&file.path().display().to_string()) && e.contains("remove it"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Needs root: the directory belongs to another uid, which root writes
    /// only with CAP_DAC_OVERRIDE, which the check's thread drops.
    #[test]
    fn a_directory_root_may_not_write_without_capabilities_is_refused() {
        let dir = tmp_dir("unwritable");
        let file = StateFile::new(dir.join("state.json"));
        assert!(
            file.open_unprivileged().is_ok(),
            "root's own 0755 directory"
        );
        std::os::unix::fs::chown(&dir, Some(4242), Some(4242)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            fs::File::create(dir.join("x")).is_ok(),
            "this thread keeps CAP_DAC_OVERRIDE"
        );
        fs::remove_file(dir.join("x")).unwrap();
        let e = format!("{:#}", file.open_unprivileged().unwrap_err());
        assert!(
            e.contains("cannot write in") && e.contains("StateDirectory"),
            "{e}"
        );
        let missing = StateFile::new(dir.join("nowhere/state.json"));
        let e = format!("{:#}", missing.open_unprivileged().unwrap_err());
        assert!(e.contains("nowhere"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

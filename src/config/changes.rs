//! What a new configuration changes, in words: a reload says it in its log line.
use std::{collections::BTreeMap, fmt::Display};

use super::{Config, FamilyAddr, ServiceConfig};

/// Each change from `old` to `new`, one phrase each, in config order (the
/// IPv4 services', then the IPv6 services'); empty when they are the same.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut said = Vec::new();
    family_changes(&old.services, &new.services, &mut said);
    family_changes(&old.services6, &new.services6, &mut said);
    let (o, n) = (&old.control, &new.control);
    let settings = [
        ("timeouts", o.timeouts != n.timeouts),
        ("health", o.health != n.health),
        ("on_failure", o.on_failure != n.on_failure),
        ("on_remove", o.on_remove != n.on_remove),
        ("stop_grace_ms", o.stop_grace != n.stop_grace),
        ("mss_clamp", old.mss_clamp != new.mss_clamp),
    ];
    said.extend(
        settings
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| format!("{key} changed")),
    );
    said
}

fn family_changes<A: FamilyAddr + Ord + Display>(
    old: &[ServiceConfig<A>],
    new: &[ServiceConfig<A>],
    said: &mut Vec<String>,
) {
    let before: BTreeMap<A, &ServiceConfig<A>> = old.iter().map(|s| (s.address, s)).collect();
    let after: BTreeMap<A, &ServiceConfig<A>> = new.iter().map(|s| (s.address, s)).collect();
    for s in old {
        if !after.contains_key(&s.address) {
            said.push(format!("service {} removed", s.address));
        }
    }
    for s in new {
        match before.get(&s.address) {
            None => said.push(format!(
                "service {} added ({} daemons)",
                s.address,
                s.backends.len()
            )),
            Some(was) => service_changes(was, s, said),
        }
    }
}

fn service_changes<A: FamilyAddr + Ord + Display>(
    old: &ServiceConfig<A>,
    new: &ServiceConfig<A>,
    said: &mut Vec<String>,
) {
    let vip = new.address;
    if old.policy != new.policy {
        said.push(format!(
            "service {vip}: policy {} -> {}",
            old.policy, new.policy
        ));
    }
    let weights: BTreeMap<A, u32> = old.backends.iter().map(|b| (b.addr, b.weight)).collect();
    let kept: BTreeMap<A, u32> = new.backends.iter().map(|b| (b.addr, b.weight)).collect();
    for b in &old.backends {
        if !kept.contains_key(&b.addr) {
            said.push(format!("service {vip}: daemon {} removed", b.addr));
        }
    }
    for b in &new.backends {
        match weights.get(&b.addr) {
            None => said.push(format!(
                "service {vip}: daemon {} added (weight {})",
                b.addr, b.weight
            )),
            Some(&w) if w != b.weight => said.push(format!(
                "service {vip}: daemon {} weight {w} -> {}",
                b.addr, b.weight
            )),
            Some(_) => {}
        }
    }
    let order = |s: &ServiceConfig<A>| s.backends.iter().map(|b| b.addr).collect::<Vec<_>>();
    let same_set = weights.len() == kept.len() && weights.keys().all(|a| kept.contains_key(a));
    if same_set && order(old) != order(new) {
        said.push(format!("service {vip}: daemons reordered"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{balance::PolicyKind, config::HealthCheck};
    use std::time::Duration;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text).expect("a valid config")
    }

    const BASE: &str = r#"
        front = "l0"
        back = "l1"
        [[service]]
        address = "198.18.0.10:80"
        backends = ["198.19.0.2:8080", "198.19.0.3:8080"]
        [[service]]
        address = "198.18.0.11:80"
        backends = ["198.19.0.4:8080"]
    "#;

    #[test]
    fn the_same_config_changes_nothing() {
        assert!(changes(&config(BASE), &config(BASE)).is_empty());
    }

    #[test]
    fn services_daemons_weights_policy_and_settings_are_each_named() {
        let old = config(BASE);
        let mut new = old.clone();
        new.services.remove(1);
        new.services[0].policy = PolicyKind::Maglev;
        new.services[0].backends[0].weight = 3;
        new.services[0].backends.remove(1);
        let mut added = new.services[0].clone();
        added.address = "198.18.0.12:443".parse().unwrap();
        added.backends[0].addr = "198.19.0.9:8443".parse().unwrap();
        new.services.push(added);
        new.services[0].backends.push(crate::balance::BackendSpec {
            addr: "198.19.0.5:8080".parse().unwrap(),
            weight: 1,
        });
        new.control.health = HealthCheck {
            rise: 5,
            ..new.control.health
        };
        new.control.stop_grace = Duration::from_secs(9);
        assert_eq!(
            changes(&old, &new),
            [
                "service 198.18.0.11:80 removed",
                "service 198.18.0.10:80: policy round_robin -> maglev",
                "service 198.18.0.10:80: daemon 198.19.0.3:8080 removed",
                "service 198.18.0.10:80: daemon 198.19.0.2:8080 weight 1 -> 3",
                "service 198.18.0.10:80: daemon 198.19.0.5:8080 added (weight 1)",
                "service 198.18.0.12:443 added (1 daemons)",
                "health changed",
                "stop_grace_ms changed",
            ]
        );
    }

    #[test]
    fn ipv6_services_and_daemons_are_named_in_brackets() {
        let old = config(&format!(
            "{BASE}\n[[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
             backends = [\"[2001:2:0:2::11]:8080\", \"[2001:2:0:2::12]:8080\"]\n"
        ));
        let mut new = old.clone();
        new.services6[0].backends[0].weight = 2;
        new.services6[0].backends.remove(1);
        let mut added = new.services6[0].clone();
        added.address = "[2001:2:0:1::101]:443".parse().unwrap();
        new.services6.push(added);
        assert_eq!(
            changes(&old, &new),
            [
                "service [2001:2:0:1::100]:80: daemon [2001:2:0:2::12]:8080 removed",
                "service [2001:2:0:1::100]:80: daemon [2001:2:0:2::11]:8080 weight 1 -> 2",
                "service [2001:2:0:1::101]:443 added (1 daemons)",
            ]
        );
        assert_eq!(
            changes(&new, &config(BASE)),
            [
                "service [2001:2:0:1::100]:80 removed",
                "service [2001:2:0:1::101]:443 removed"
            ]
        );
    }

    #[test]
    fn a_new_order_of_the_same_daemons_is_said() {
        let old = config(BASE);
        let mut new = old.clone();
        new.services[0].backends.reverse();
        assert_eq!(
            changes(&old, &new),
            ["service 198.18.0.10:80: daemons reordered"]
        );
    }
}

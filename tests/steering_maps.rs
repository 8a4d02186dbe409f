//! The steering program's maps after a reload hold exactly what a fresh start
//! with the new configuration puts there: nothing of a removed service (its VIP
//! included) stays behind. Loads the real program (root, BPF); attaches nothing.
use dispatchd::{
    balance::BackendSpec,
    config::{Config, Protocol, ServiceConfig},
    dataplane::Retired,
    xdp::{Interface, Replies, Steering, SteeringTable},
};

fn config(services: &[(&str, &[&str])]) -> Config {
    let mut text = String::from("front = \"l0\"\nback = \"l1\"\n");
    for (vip, daemons) in services {
        let list: Vec<String> = daemons.iter().map(|d| format!("{d:?}")).collect();
        text.push_str(&format!(
            "[[service]]\naddress = {vip:?}\nbackends = [{}]\n",
            list.join(", ")
        ));
    }
    Config::from_toml_str(&text).expect("a valid config")
}

fn load() -> Steering {
    let uid = std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .expect("a Uid line");
    assert_eq!(
        uid, "0",
        "loading the XDP program needs root; run scripts/test.sh as root"
    );
    // The program is only loaded, never attached: any interface will do.
    let lo = Interface::lookup("lo").expect("lo");
    Steering::load(&lo, &lo, Replies::Stateless).expect("loading the XDP program")
}

#[test]
fn a_reload_leaves_the_maps_a_fresh_start_would() {
    let a = config(&[
        ("198.18.0.100:80", &["198.19.0.11:8080", "198.19.0.12:8080"]),
        ("198.18.0.101:443", &["198.19.0.13:8443"]),
        ("198.18.0.102:80", &["198.19.0.14:8080"]),
    ]);
    // 101 goes (its VIP with it), 102 stays, 100 loses a daemon and gains one,
    // 103 comes, and a daemon moves from one service to another.
    let b = config(&[
        ("198.18.0.103:80", &["198.19.0.12:8080"]),
        ("198.18.0.102:80", &["198.19.0.14:8080"]),
        ("198.18.0.100:80", &["198.19.0.15:8080", "198.19.0.11:8080"]),
    ]);

    let mut reloaded = load();
    reloaded.sync(&SteeringTable::of(&a, &[])).unwrap();
    assert_eq!(reloaded.contents().unwrap(), SteeringTable::of(&a, &[]));
    reloaded.sync(&SteeringTable::of(&b, &[])).unwrap();

    let mut fresh = load();
    fresh.sync(&SteeringTable::of(&b, &[])).unwrap();

    let want = SteeringTable::of(&b, &[]);
    assert_eq!(fresh.contents().unwrap(), want);
    assert_eq!(reloaded.contents().unwrap(), want);
    let vips: Vec<String> = want.vips.keys().map(|v| v.to_string()).collect();
    assert_eq!(vips, ["198.18.0.100", "198.18.0.102", "198.18.0.103"]);
    assert_eq!(
        want.daemons[&("198.19.0.12:8080".parse().unwrap(), Protocol::Tcp)],
        "198.18.0.103:80".parse().unwrap(),
        "a daemon that changed service answers for its new one"
    );
}

#[test]
fn a_retired_daemon_keeps_its_reply_entry_until_it_is_let_go() {
    let a = config(&[("198.18.0.100:80", &["198.19.0.11:8080", "198.19.0.12:8080"])]);
    let b = config(&[("198.18.0.100:80", &["198.19.0.12:8080"])]);
    let retired = [Retired {
        daemon: "198.19.0.11:8080".parse().unwrap(),
        service: "198.18.0.100:80".parse().unwrap(),
        protocol: Protocol::Tcp,
    }];
    let mut steering = load();
    steering.sync(&SteeringTable::of(&a, &[])).unwrap();
    steering.sync(&SteeringTable::of(&b, &retired)).unwrap();
    let held = steering.contents().unwrap();
    assert_eq!(
        held,
        SteeringTable::of(&a, &[]),
        "its replies still steered"
    );
    steering.sync(&SteeringTable::of(&b, &[])).unwrap();
    let after = steering.contents().unwrap();
    assert_eq!(after, SteeringTable::of(&b, &[]));
    assert!(!after
        .daemons
        .contains_key(&(retired[0].v4().unwrap().0, Protocol::Tcp)));
}

#[test]
fn a_reload_that_adds_a_udp_service_on_a_tcp_vip_port_keys_both_by_protocol() {
    let a = config(&[("198.18.0.100:80", &["198.19.0.11:8080"])]);
    let mut b = a.clone();
    b.services.push(ServiceConfig {
        protocol: Protocol::Udp,
        backends: vec![BackendSpec {
            addr: "198.19.0.21:5353".parse().unwrap(),
            weight: 1,
        }],
        ..a.services[0].clone()
    });
    b.validate().unwrap();
    let mut steering = load();
    steering.sync(&SteeringTable::of(&a, &[])).unwrap();
    steering.sync(&SteeringTable::of(&b, &[])).unwrap();
    let held = steering.contents().unwrap();
    assert_eq!(held, SteeringTable::of(&b, &[]));
    let vip: std::net::SocketAddrV4 = "198.18.0.100:80".parse().unwrap();
    assert_eq!(held.services[&(vip, Protocol::Tcp)], 0);
    assert_eq!(held.services[&(vip, Protocol::Udp)], 1);
    assert_eq!(
        held.vips[vip.ip()],
        (dispatchd::config::VIP_TCP | dispatchd::config::VIP_UDP) as u8
    );
    // And back: the UDP entries go, the TCP ones stay.
    steering.sync(&SteeringTable::of(&a, &[])).unwrap();
    assert_eq!(steering.contents().unwrap(), SteeringTable::of(&a, &[]));
}

use super::*;
use std::time::Duration;

fn b(s: &str) -> BackendSpec {
    let spec = parse_backend(s).unwrap();
    match spec.addr {
        SocketAddr::V4(addr) => BackendSpec {
            addr,
            weight: spec.weight,
        },
        SocketAddr::V6(_) => panic!("{s} is not IPv4"),
    }
}

fn b6(s: &str) -> BackendSpec<SocketAddrV6> {
    let spec = parse_backend(s).unwrap();
    match spec.addr {
        SocketAddr::V6(addr) => BackendSpec {
            addr,
            weight: spec.weight,
        },
        SocketAddr::V4(_) => panic!("{s} is not IPv6"),
    }
}

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn base() -> Config {
    Config {
        front: "l0".into(),
        back: "l1".into(),
        queues: Some(2),
        cores: vec![],
        control_core: None,
        bind_mode: BindMode::Auto,
        xdp_mode: XdpMode::Auto,
        poll: PollMode::Adaptive,
        worker_priority: None,
        flow_capacity: DEFAULT_FLOW_CAPACITY,
        frames_per_queue: DEFAULT_FRAMES_PER_QUEUE,
        batch: DEFAULT_BATCH,
        event_ring: DEFAULT_EVENT_RING,
        mss_clamp: None,
        reply_mode: ReplyMode::Stateless,
        services6: vec![],
        services: vec![
            ServiceConfig {
                address: a("198.18.0.100:80"),
                protocol: Protocol::Tcp,
                policy: PolicyKind::RoundRobin,
                backends: vec![b("198.19.0.11:8080"), b("198.19.0.12:8080")],
                health: ServiceHealth::default(),
            },
            ServiceConfig {
                address: a("198.18.0.101:80"),
                protocol: Protocol::Tcp,
                policy: PolicyKind::Maglev,
                backends: vec![b("198.19.0.13:8080")],
                health: ServiceHealth::default(),
            },
        ],
        control: ControlConfig::default(),
    }
}

#[test]
fn flow_capacity_beyond_the_table_limit_is_refused() {
    let mut c = base();
    c.flow_capacity = crate::flow::MAX_CAPACITY + 1;
    assert!(matches!(err(c), ConfigError::FlowCapacityTooLarge { .. }));
}

#[test]
fn tracked_replies_need_a_kernel_map_the_size_of_the_tables() {
    let mut c = base();
    c.reply_mode = ReplyMode::Tracked;
    c.queues = Some(64);
    c.flow_capacity = MAX_TRACKED as usize / 64;
    assert!(c.validate().is_ok());
    c.flow_capacity += 1;
    let e = err(c.clone());
    assert!(
        matches!(e, ConfigError::TrackedTooLarge { connections } if connections == c.tracked_capacity(64)),
        "{e}"
    );
    // Two cores bound the workers to two whatever the queues: the start-up
    // check, with the real count, is the one that decides.
    c.cores = vec![1, 2];
    assert!(c.validate().is_ok());
    assert!(c.check_tracked_room(2).is_ok());
    assert!(c.check_tracked_room(64).is_err());
    c.cores.clear();
    // Stateless replies keep no such map.
    c.reply_mode = ReplyMode::Stateless;
    assert!(c.validate().is_ok());
}

#[test]
fn reply_mode_parses_defaults_to_stateless_and_rejects_other_words() {
    let service = "[[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n";
    let parse = |extra: &str| {
        Config::from_toml_str(&format!("front = \"l0\"\nback = \"l1\"\n{extra}{service}"))
    };
    assert_eq!(parse("").unwrap().reply_mode, ReplyMode::Stateless);
    assert_eq!(
        parse("reply_mode = \"tracked\"\n").unwrap().reply_mode,
        ReplyMode::Tracked
    );
    let e = parse("reply_mode = \"stateful\"\n").unwrap_err();
    assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
}

#[test]
fn control_settings_are_validated() {
    assert!(base().validate().is_ok());
    let mut c = base();
    c.control.metrics_listen = Some("0.0.0.0:9100".parse().unwrap());
    assert!(matches!(err(c), ConfigError::MetricsNotLoopback { .. }));
    let mut c = base();
    c.control.timeouts.idle = std::time::Duration::ZERO;
    let e = err(c);
    assert!(
        matches!(
            e,
            ConfigError::Zero {
                key: "timeouts.idle_ms"
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "timeouts.idle_ms = 0: must be greater than zero"
    );
    let mut c = base();
    c.control.health.timeout = c.control.health.interval * 2;
    assert_eq!(
        err(c).to_string(),
        "health.timeout_ms = 2000 is longer than health.interval_ms = 1000: \
         a probe must end before the next one starts"
    );
}

#[test]
fn each_zero_health_setting_is_named() {
    type Set = fn(&mut HealthCheck);
    let cases: [(&str, Set); 4] = [
        ("health.interval_ms", |h| h.interval = Duration::ZERO),
        ("health.timeout_ms", |h| h.timeout = Duration::ZERO),
        ("health.rise", |h| h.rise = 0),
        ("health.fall", |h| h.fall = 0),
    ];
    for (key, set) in cases {
        let mut c = base();
        set(&mut c.control.health);
        let e = err(c);
        assert!(matches!(e, ConfigError::Zero { key: k } if k == key), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{key} = 0: must be greater than zero")
        );
    }
}

#[test]
fn services_and_daemons_must_be_one_hosts_address_and_port() {
    let service_cases = [
        ("198.18.0.100:0", "port 0"),
        ("0.0.0.0:80", "0.0.0.0 is no host's address"),
        ("0.1.2.3:80", "this network"),
        ("255.255.255.255:80", "broadcast"),
        ("224.0.0.1:80", "multicast"),
        ("239.255.255.250:80", "multicast"),
        ("127.0.0.1:80", "loopback"),
    ];
    for (address, why) in service_cases {
        let mut c = base();
        c.services[1].address = a(address);
        let e = err(c);
        assert!(matches!(e, ConfigError::BadServiceAddress { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("service {address}: ")) && msg.contains(why),
            "{msg}"
        );
    }
    let daemon_cases = service_cases.map(|(address, why)| (address.replace(":80", ":8080"), why));
    for (daemon, why) in daemon_cases {
        let mut c = base();
        c.services[0].backends[1] = b(&daemon);
        let e = err(c);
        assert!(matches!(e, ConfigError::BadBackendAddress { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("backend {daemon} of service 198.18.0.100:80: "))
                && msg.contains(why),
            "{msg}"
        );
    }
    // The edges that are one host's: the first and last unicast addresses.
    let mut c = base();
    c.services[0].backends[1] = b("1.0.0.0:1");
    c.services[1].address = a("223.255.255.254:65535");
    assert!(c.validate().is_ok());
}

#[test]
fn control_tables_parse_with_defaults_and_reject_unknown_keys() {
    let text = "front = \"l0\"\nback = \"l1\"\ncontrol_socket = \"/tmp/x.sock\"\n\
                metrics_listen = \"127.0.0.1:9100\"\non_remove = \"reset\"\n[timeouts]\nidle_ms = 2000\n\
                [health]\nfall = 2\non_failure = \"reset\"\n\
                [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n";
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(
        c.control.control_socket,
        std::path::PathBuf::from("/tmp/x.sock")
    );
    assert_eq!(c.control.timeouts.idle, std::time::Duration::from_secs(2));
    assert_eq!(c.control.timeouts.syn, super::Timeouts::default().syn);
    assert_eq!(c.control.health.fall, 2);
    assert_eq!(c.control.on_failure, OnFailure::Reset);
    assert_eq!(c.control.on_remove, OnRemove::Reset);
    let finish = Config::from_toml_str(&text.replace("on_remove = \"reset\"\n", "")).unwrap();
    assert_eq!(finish.control.on_remove, OnRemove::Finish, "the default");
    let bad = text.replace("idle_ms", "idle_msec");
    let e = Config::from_toml_str(&bad).unwrap_err().to_string();
    assert!(e.contains("idle_msec"), "{e}");
}

fn err(c: Config) -> ConfigError {
    c.validate().unwrap_err()
}

#[test]
fn base_is_valid() {
    base().validate().unwrap();
}

#[test]
fn minimal_file_gets_defaults() {
    let c = Config::from_toml_str(
        r#"front = "eth0"
back = "eth1"
[[service]]
address = "10.0.0.1:80"
backends = ["10.0.1.1:80"]
"#,
    )
    .unwrap();
    assert_eq!(c.queues, None, "every queue served unless asserted");
    assert!(c.cores.is_empty());
    assert_eq!(c.bind_mode, BindMode::Auto);
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert_eq!(c.poll, PollMode::Adaptive);
    assert_eq!(c.flow_capacity, DEFAULT_FLOW_CAPACITY);
    assert_eq!(c.frames_per_queue, DEFAULT_FRAMES_PER_QUEUE);
    assert_eq!(c.batch, DEFAULT_BATCH);
    assert_eq!(c.services[0].policy, PolicyKind::RoundRobin);
    assert_eq!(c.services[0].backends, vec![b("10.0.1.1:80@1")]);
}

#[test]
fn parse_backend_forms() {
    assert_eq!(
        b("1.2.3.4:80"),
        BackendSpec {
            addr: a("1.2.3.4:80"),
            weight: 1
        }
    );
    assert_eq!(b("1.2.3.4:80@7").weight, 7);
    assert_eq!(b("1.2.3.4:80@0").weight, 0); // rejected later by validation
    let e = parse_backend("1.2.3.4:80@x").unwrap_err();
    assert!(e.contains("weight \"x\""), "{e}");
    let e = parse_backend("1.2.3.4").unwrap_err();
    assert!(e.contains("\"1.2.3.4\"") && e.contains("ADDR:PORT"), "{e}");
    assert_eq!(
        b6("[2001:2:0:2::11]:8080@3"),
        BackendSpec {
            addr: "[2001:2:0:2::11]:8080".parse().unwrap(),
            weight: 3
        }
    );
    let e = parse_backend("2001:2:0:2::11:8080").unwrap_err();
    assert!(e.contains("[2001:2:0:1::100]:80"), "{e}");
}

#[test]
fn interface_names() {
    for (name, reason) in [
        ("", "empty"),
        ("abcdefghijklmnop", "15 bytes"),
        ("a/b", "'/'"),
        ("a b", "whitespace"),
        ("a:1", "':'"),
        ("..", "reserved"),
    ] {
        let mut c = base();
        c.front = name.into();
        let e = err(c);
        assert!(matches!(
            e,
            ConfigError::BadInterface { field: "front", .. }
        ));
        let msg = e.to_string();
        assert!(msg.contains("front") && msg.contains(reason), "{msg}");
    }
    let mut c = base();
    c.back = "x\ty".into();
    assert!(matches!(
        err(c),
        ConfigError::BadInterface { field: "back", .. }
    ));
    let mut c = base();
    c.front = "abcdefghijklmno".into(); // exactly 15
    c.validate().unwrap();
}

#[test]
fn same_interface() {
    let mut c = base();
    c.back = "l0".into();
    let e = err(c);
    assert!(matches!(e, ConfigError::SameInterface { .. }));
    assert!(e.to_string().contains("\"l0\""));
}

#[test]
fn queues_range() {
    for q in [0, MAX_QUEUES + 1] {
        let mut c = base();
        c.queues = Some(q);
        let e = err(c);
        assert!(matches!(e, ConfigError::QueuesOutOfRange { .. }));
        assert!(e.to_string().contains(&format!("queues = {q}")));
    }
    for q in [Some(1), Some(MAX_QUEUES), None] {
        let mut c = base();
        c.queues = q;
        c.validate().unwrap();
    }
}

#[test]
fn cores_rules() {
    // Workers and queues are independent: a worker serves one queue or several.
    for queues in [Some(2), Some(7), None] {
        let mut c = base();
        c.queues = queues;
        c.cores = vec![1];
        c.validate().unwrap();
    }
    let mut c = base();
    c.cores = (0..=MAX_QUEUES as usize).collect();
    let e = err(c);
    assert!(matches!(e, ConfigError::TooManyCores { cores } if cores == MAX_QUEUES as usize + 1));
    assert!(e
        .to_string()
        .contains(&format!("at most {MAX_QUEUES} workers")));
    let mut c = base();
    c.cores = vec![3, 3];
    let e = err(c);
    assert!(matches!(e, ConfigError::DuplicateCore { core: 3 }));
    assert!(e.to_string().contains("core 3"));
    let mut c = base();
    c.cores = vec![3, 4];
    c.validate().unwrap();
}

#[test]
fn control_core_within_the_affinity_set() {
    let mut c = base();
    c.control_core = Some(MAX_CORE);
    let e = err(c);
    assert!(matches!(e, ConfigError::ControlCoreOutOfRange { core } if core == MAX_CORE));
    assert!(e.to_string().contains("control_core = 1024"), "{e}");
    // Sharing a worker's core is allowed: the one-core deployment.
    let mut c = base();
    c.cores = vec![1];
    c.control_core = Some(1);
    c.validate().unwrap();
    let mut c = base();
    c.control_core = Some(MAX_CORE - 1);
    c.validate().unwrap();
}

#[test]
fn batch_and_frames() {
    for batch in [0, MAX_BATCH + 1] {
        let mut c = base();
        c.batch = batch;
        let e = err(c);
        assert!(matches!(e, ConfigError::BatchOutOfRange { .. }), "{e}");
        assert!(e.to_string().contains(&format!("batch = {batch}")));
    }
    let mut c = base();
    c.frames_per_queue = 3000;
    let e = err(c);
    assert!(matches!(
        e,
        ConfigError::FramesNotPowerOfTwo { frames: 3000 }
    ));
    assert!(e.to_string().contains("frames_per_queue = 3000"));

    let mut c = base();
    c.frames_per_queue = 64; // batch 64 needs >= 128
    let e = err(c);
    assert!(matches!(
        e,
        ConfigError::FramesTooSmall {
            frames: 64,
            min: 128
        }
    ));
    assert!(e.to_string().contains("128"));

    let mut c = base();
    c.frames_per_queue = MAX_FRAMES_PER_QUEUE * 2;
    assert!(matches!(err(c), ConfigError::FramesTooLarge { .. }));

    let mut c = base();
    c.frames_per_queue = 0;
    assert!(matches!(err(c), ConfigError::FramesNotPowerOfTwo { .. }));

    let mut c = base();
    c.batch = 1;
    c.frames_per_queue = 2;
    c.validate().unwrap();
}

#[test]
fn flow_capacity_zero() {
    let mut c = base();
    c.flow_capacity = 0;
    assert!(matches!(err(c), ConfigError::ZeroFlowCapacity));
}

#[test]
fn service_rules() {
    let mut c = base();
    c.services.clear();
    assert!(matches!(err(c), ConfigError::NoServices));

    let mut c = base();
    c.services[1].address = c.services[0].address;
    let e = err(c);
    assert!(matches!(e, ConfigError::DuplicateService { .. }));
    assert!(e.to_string().contains("198.18.0.100:80"));

    let mut c = base();
    c.services[1].backends.clear();
    let e = err(c);
    assert!(matches!(e, ConfigError::NoBackends { .. }));
    assert!(e.to_string().contains("198.18.0.101:80"));

    let mut c = base();
    c.services[0].backends.push(b("198.19.0.11:8080@5"));
    let e = err(c);
    assert!(matches!(e, ConfigError::DuplicateBackend { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("198.19.0.11:8080") && msg.contains("198.18.0.100:80"),
        "{msg}"
    );

    let mut c = base();
    c.services[1].backends.push(b("198.19.0.11:8080"));
    let e = err(c);
    assert!(matches!(e, ConfigError::BackendInTwoServices { .. }));
    assert_eq!(
        e.to_string(),
        "backend 198.19.0.11:8080 (tcp) is listed in services 198.18.0.100:80 and \
         198.18.0.101:80; a daemon ADDR:PORT serves one service of each protocol"
    );

    let mut c = base();
    c.services[0].backends[1].weight = 0;
    let e = err(c);
    assert!(matches!(e, ConfigError::ZeroWeight { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("198.19.0.12:8080") && msg.contains("weight 0"),
        "{msg}"
    );

    let mut c = base();
    c.services[0].backends.push(b("198.18.0.101:80"));
    let e = err(c);
    assert!(matches!(e, ConfigError::BackendIsService { .. }));
    assert!(e.to_string().contains("198.18.0.101:80"));

    // Same IP, other port: a different service, allowed.
    let mut c = base();
    c.services[0].backends.push(b("198.18.0.101:81"));
    c.validate().unwrap();
}

#[test]
fn file_missing_front_is_unset() {
    let e = Config::from_toml_str(
        "back = \"l1\"\n[[service]]\naddress = \"1.2.3.4:80\"\nbackends = [\"1.1.1.1:1\"]\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Unset { key: "front", .. }));
    assert!(e.to_string().contains("--front"));
}

#[test]
fn single_table_service_gets_a_hint() {
    let e = Config::from_toml_str("[service]\naddress = \"1.2.3.4:80\"\n").unwrap_err();
    assert!(matches!(e, ConfigError::BadValue { line: 1, .. }));
    assert!(e.to_string().contains("[[service]]"), "{e}");
}

#[test]
fn line_numbers() {
    assert_eq!(file_line("a\nb\nc", 0), 1);
    assert_eq!(file_line("a\nb\nc", 2), 2);
    assert_eq!(file_line("a\nb\nc", 4), 3);
    assert_eq!(file_line("a\nb\nc", 99), 3);
}

fn file_line(text: &str, at: usize) -> usize {
    file::line_of_for_tests(text, at)
}

#[test]
fn more_services_or_daemons_than_the_steering_maps_hold_are_refused() {
    let service = |i: usize, daemons: usize| ServiceConfig {
        address: SocketAddrV4::new(
            std::net::Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8),
            80,
        ),
        protocol: Protocol::Tcp,
        policy: PolicyKind::RoundRobin,
        backends: (0..daemons)
            .map(|d| BackendSpec {
                addr: SocketAddrV4::new(
                    std::net::Ipv4Addr::new(198, 19, (i % 256) as u8, 1),
                    (1000 + d) as u16,
                ),
                weight: 1,
            })
            .collect(),
        health: ServiceHealth::default(),
    };
    let mut c = base();
    c.services = (0..=MAX_SERVICES as usize).map(|i| service(i, 1)).collect();
    assert!(
        matches!(err(c), ConfigError::TooManyServices { services } if services == MAX_SERVICES as usize + 1)
    );
    let mut c = base();
    c.services = (0..2)
        .map(|i| service(i, MAX_DAEMONS as usize / 2))
        .collect();
    c.validate().unwrap();
    c.services[1].backends.push(BackendSpec {
        addr: a("198.19.9.9:1"),
        weight: 1,
    });
    assert!(
        matches!(err(c), ConfigError::TooManyDaemons { daemons } if daemons == MAX_DAEMONS as usize + 1)
    );
}

#[test]
fn daemons_are_numbered_in_config_order_across_services() {
    let ids: Vec<_> = base()
        .daemons()
        .map(|(id, service, b)| (id.0, service, b.addr))
        .collect();
    assert_eq!(
        ids,
        [
            (0, a("198.18.0.100:80"), a("198.19.0.11:8080")),
            (1, a("198.18.0.100:80"), a("198.19.0.12:8080")),
            (2, a("198.18.0.101:80"), a("198.19.0.13:8080")),
        ]
    );
}

#[test]
fn event_ring_is_a_power_of_two_in_range() {
    for slots in [0, 1, 3, 1000, MAX_EVENT_RING * 2] {
        let mut c = base();
        c.event_ring = slots;
        let e = err(c);
        assert!(matches!(e, ConfigError::BadEventRing { .. }), "{slots}");
        assert!(e.to_string().contains(&format!("event_ring = {slots}")));
    }
    for slots in [MIN_EVENT_RING, 16, DEFAULT_EVENT_RING, MAX_EVENT_RING] {
        let mut c = base();
        c.event_ring = slots;
        c.validate().unwrap();
    }
}

#[test]
fn mss_clamp_range() {
    for ok in [MIN_MSS_CLAMP, 1240, 1460, MAX_MSS_CLAMP] {
        let mut c = base();
        c.mss_clamp = Some(ok);
        assert!(c.validate().is_ok(), "{ok}");
    }
    for bad in [0, 1, MIN_MSS_CLAMP - 1, MAX_MSS_CLAMP + 1, u16::MAX] {
        let mut c = base();
        c.mss_clamp = Some(bad);
        let e = err(c);
        assert!(
            matches!(e, ConfigError::MssClampOutOfRange { mss } if mss == bad),
            "{bad}: {e}"
        );
        assert_eq!(
            e.to_string(),
            format!("mss_clamp = {bad} is out of range 536..=65495")
        );
    }
}

#[test]
fn mss_clamp_from_the_file() {
    let text = "front = \"l0\"\nback = \"l1\"\nmss_clamp = 1240\n\
                [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n";
    assert_eq!(Config::from_toml_str(text).unwrap().mss_clamp, Some(1240));
    let none = text.replace("mss_clamp = 1240\n", "");
    assert_eq!(Config::from_toml_str(&none).unwrap().mss_clamp, None);
    let big = text.replace("1240", "70000");
    assert!(matches!(
        Config::from_toml_str(&big),
        Err(ConfigError::BadValue { .. })
    ));
    let small = text.replace("1240", "100");
    assert!(matches!(
        Config::from_toml_str(&small),
        Err(ConfigError::MssClampOutOfRange { mss: 100 })
    ));
}

#[test]
fn the_printed_config_loads_as_the_same_with_every_optional_key_set_or_not() {
    let plain = base();
    let mut full = base();
    full.queues = Some(4);
    full.cores = vec![1, 3];
    full.mss_clamp = Some(1400);
    full.reply_mode = ReplyMode::Tracked;
    full.flow_capacity = 4096;
    full.control.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
    full.control.control_socket = "/run/dispatchd/ctl.sock".into();
    full.control.on_failure = OnFailure::Reset;
    full.control.on_remove = OnRemove::Reset;
    full.control.health.rise = 5;
    full.control.timeouts.rst_linger = Duration::from_millis(1234);
    full.control.stop_grace = Duration::from_millis(2500);
    full.control.state_file = Some("/var/lib/dispatchd/state.json".into());
    full.services[0].backends[1].weight = 7;
    full.control.timeouts.udp_idle = Duration::from_millis(4321);
    full.services.push(ServiceConfig {
        protocol: Protocol::Udp,
        backends: vec![b("198.19.0.21:5353")],
        ..full.services[0].clone()
    });
    full.services[2].health = ServiceHealth::default();
    for c in [plain, full] {
        let text = c.to_toml().unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), c, "{text}");
    }
    // A path TOML cannot hold (from the flag; not UTF-8) is an error, not a panic.
    let mut odd = base();
    let name: std::ffi::OsString =
        std::os::unix::ffi::OsStringExt::from_vec(b"/run/\xff.sock".to_vec());
    odd.control.control_socket = name.into();
    assert!(odd.to_toml().is_err());
}

#[test]
fn a_graceful_stop_has_a_limit() {
    let mut c = base();
    c.control.stop_grace = MAX_STOP_GRACE;
    assert!(c.validate().is_ok());
    c.control.stop_grace += std::time::Duration::from_millis(1);
    let e = err(c);
    assert!(matches!(e, ConfigError::StopGraceTooLong { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "stop_grace_ms = {} is longer than {} ms (the most a graceful stop may take)",
            MAX_STOP_GRACE.as_millis() + 1,
            MAX_STOP_GRACE.as_millis()
        )
    );
}

#[test]
fn a_state_file_is_an_absolute_file_path_other_than_the_control_socket() {
    let mut c = base();
    c.control.state_file = Some("/var/lib/dispatchd/state.json".into());
    assert!(c.validate().is_ok());
    for (path, reason) in [
        (
            "state.json",
            "not an absolute path (it would depend on where dispatchd was started)",
        ),
        ("/var/lib/dispatchd/", "names a directory, not a file"),
        ("/", "names a directory, not a file"),
        ("/var/lib/..", "names a directory, not a file"),
        ("/run/dispatchd.sock", "is the control socket's path"),
    ] {
        let mut c = base();
        c.control.control_socket = "/run/dispatchd.sock".into();
        c.control.state_file = Some(path.into());
        let e = err(c);
        assert!(matches!(e, ConfigError::BadStateFile { .. }), "{path}: {e}");
        assert_eq!(e.to_string(), format!("state_file {path}: {reason}"));
    }
}

/// What a reload reports as needing a restart: named by file key (each one
/// the example file documents), valued as the file writes it, and only the
/// settings that differ.
#[test]
fn restart_only_settings_are_file_keys_with_file_values() {
    let example = include_str!("../../examples/dispatchd.toml");
    let running = base();
    for (key, _) in running.restart_only() {
        assert!(
            example.contains(&format!("\n{key} = ")) || example.contains(&format!("\n# {key} = ")),
            "{key} is not a key of examples/dispatchd.toml"
        );
    }
    let mut file = base();
    file.poll = PollMode::Busy;
    file.batch = 32;
    file.control.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
    let differ: Vec<(&str, String, String)> = running
        .restart_only()
        .into_iter()
        .zip(file.restart_only())
        .filter(|(r, f)| r.1 != f.1)
        .map(|(r, f)| (r.0, r.1, f.1))
        .collect();
    assert_eq!(
        differ,
        [
            ("poll", "adaptive".to_owned(), "busy".to_owned()),
            ("batch", running.batch.to_string(), "32".to_owned()),
            (
                "metrics_listen",
                "unset".to_owned(),
                "127.0.0.1:9100".to_owned()
            ),
        ]
    );
}

/// A document with `services` (TOML `[[service]]` tables) after the interfaces.
fn with_services(services: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(&format!("front = \"l0\"\nback = \"l1\"\n{services}"))
}

#[test]
fn protocol_defaults_to_tcp_and_takes_udp() {
    let c = with_services(
        "[[service]]\naddress = \"198.18.0.100:53\"\nbackends = [\"198.19.0.11:53\"]\n\
         [[service]]\naddress = \"198.18.0.101:53\"\nprotocol = \"udp\"\n\
         backends = [\"198.19.0.12:53\"]\n",
    )
    .unwrap();
    assert_eq!(c.services[0].protocol, Protocol::Tcp);
    assert_eq!(c.services[1].protocol, Protocol::Udp);
    let e = with_services(
        "[[service]]\naddress = \"198.18.0.100:53\"\nprotocol = \"sctp\"\n\
         backends = [\"198.19.0.11:53\"]\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
}

#[test]
fn a_vip_port_may_have_one_tcp_and_one_udp_service() {
    let mut c = base();
    c.services[1] = ServiceConfig {
        protocol: Protocol::Udp,
        ..c.services[0].clone()
    };
    c.services[1].backends = vec![b("198.19.0.21:8080")];
    assert!(c.validate().is_ok());
    let mut twice = c.clone();
    twice.services[0].protocol = Protocol::Udp;
    twice.services[0].backends = vec![b("198.19.0.22:8080")];
    let e = err(twice);
    assert!(
        matches!(
            e,
            ConfigError::DuplicateService {
                protocol: Protocol::Udp,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "service 198.18.0.100:80 (udp) is listed twice"
    );
}

#[test]
fn a_daemon_serves_a_tcp_and_a_udp_service() {
    // One ADDR:PORT behind a TCP and a UDP service on one VIP:port (a DNS server).
    let mut c = base();
    c.services[1] = ServiceConfig {
        protocol: Protocol::Udp,
        ..c.services[0].clone()
    };
    c.validate().expect("one daemon per protocol");
    // ... and on two VIPs.
    let mut c = base();
    c.services[1].protocol = Protocol::Udp;
    c.services[1].backends.push(b("198.19.0.11:8080"));
    c.validate().expect("one daemon per protocol");
}

#[test]
fn a_daemon_serves_one_service_of_each_protocol() {
    let mut c = base();
    c.services[0].protocol = Protocol::Udp;
    c.services[1].protocol = Protocol::Udp;
    c.services[1].backends.push(b("198.19.0.11:8080"));
    let e = err(c);
    assert!(matches!(e, ConfigError::BackendInTwoServices { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "backend 198.19.0.11:8080 (udp) is listed in services 198.18.0.100:80 and \
         198.18.0.101:80; a daemon ADDR:PORT serves one service of each protocol"
    );
}

#[test]
fn a_udp_service_has_no_health_check() {
    let e = with_services(
        "[[service]]\naddress = \"198.18.0.100:53\"\nprotocol = \"udp\"\n\
         backends = [\"198.19.0.11:53\"]\n[service.health]\nkind = \"tcp\"\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::UdpHealth { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "service 198.18.0.100:53 (udp): [service.health] is for TCP services; \
         a UDP service's daemons are not probed"
    );
}

#[test]
fn udp_idle_defaults_to_ipvs_and_zero_is_refused() {
    assert_eq!(
        base().control.timeouts.udp_idle,
        Duration::from_secs(300),
        "IPVS's UDP timeout"
    );
    let c = with_services(
        "[timeouts]\nudp_idle_ms = 1500\n[[service]]\naddress = \"198.18.0.100:53\"\n\
         backends = [\"198.19.0.11:53\"]\n",
    )
    .unwrap();
    assert_eq!(c.control.timeouts.udp_idle, Duration::from_millis(1500));
    let mut c = base();
    c.control.timeouts.udp_idle = Duration::ZERO;
    assert_eq!(
        err(c).to_string(),
        "timeouts.udp_idle_ms = 0: must be greater than zero"
    );
}

const SERVICE6: &str = "[[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
                        backends = [\"[2001:2:0:2::11]:8080\", \"[2001:2:0:2::12]:8080@2\"]\n";

#[test]
fn an_ipv6_service_is_read_into_services6_with_ids_after_the_ipv4_daemons() {
    let c = with_services(&format!(
        "{SERVICE6}[[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n"
    ))
    .unwrap();
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services6.len(), 1);
    let s6 = &c.services6[0];
    assert_eq!(s6.address, "[2001:2:0:1::100]:80".parse().unwrap());
    assert_eq!(
        s6.backends,
        vec![b6("[2001:2:0:2::11]:8080"), b6("[2001:2:0:2::12]:8080@2")]
    );
    assert_eq!(
        s6.health.schedule, c.control.health,
        "[health] defaults apply"
    );
    let ids: Vec<_> = c.daemons6().map(|(id, _, b)| (id.0, b.addr)).collect();
    assert_eq!(
        ids,
        vec![
            (1, "[2001:2:0:2::11]:8080".parse().unwrap()),
            (2, "[2001:2:0:2::12]:8080".parse().unwrap())
        ]
    );
}

#[test]
fn a_service_and_its_daemons_are_of_one_family() {
    let e = with_services(
        "[[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
         backends = [\"[2001:2:0:2::11]:8080\", \"198.19.0.11:8080\"]\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::MixedFamily { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "backend 198.19.0.11:8080 of service [2001:2:0:1::100]:80: a service and its daemons \
         are of one family (IPv4 or IPv6); dispatchd does not translate between them"
    );
    let e = with_services(
        "[[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"[2001:2:0:2::11]:8080\"]\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::MixedFamily { .. }), "{e}");
}

#[test]
fn ipv6_duplicates_are_refused_per_protocol_as_for_ipv4() {
    let mut c = with_services(SERVICE6).unwrap();
    let mut udp = c.services6[0].clone();
    udp.protocol = Protocol::Udp;
    udp.backends = vec![b6("[2001:2:0:2::21]:53")];
    c.services6.push(udp);
    assert!(
        c.validate().is_ok(),
        "one TCP and one UDP service per VIP:port"
    );

    let mut twice = c.clone();
    twice.services6[1].protocol = Protocol::Tcp;
    let e = err(twice);
    assert_eq!(
        e.to_string(),
        "service [2001:2:0:1::100]:80 (tcp) is listed twice"
    );

    // One daemon ADDR:PORT behind the TCP and the UDP service.
    let mut shared = c.clone();
    shared.services6[1].backends = vec![b6("[2001:2:0:2::11]:8080")];
    shared.validate().expect("one daemon per protocol");

    // ... but not behind two UDP services.
    let mut udp2 = shared.clone();
    let mut other = udp2.services6[1].clone();
    other.address = "[2001:2:0:1::101]:80".parse().unwrap();
    udp2.services6.push(other);
    let e = err(udp2);
    assert!(matches!(e, ConfigError::BackendInTwoServices { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "backend [2001:2:0:2::11]:8080 (udp) is listed in services [2001:2:0:1::100]:80 and \
         [2001:2:0:1::101]:80; a daemon ADDR:PORT serves one service of each protocol"
    );

    let mut dup = c.clone();
    dup.services6[0].backends.push(b6("[2001:2:0:2::11]:8080"));
    let e = err(dup);
    assert_eq!(
        e.to_string(),
        "backend [2001:2:0:2::11]:8080 is listed twice in service [2001:2:0:1::100]:80"
    );

    let mut vip = c.clone();
    vip.services6[0].backends.push(b6("[2001:2:0:1::100]:80"));
    assert!(matches!(err(vip), ConfigError::BackendIsService { .. }));

    let mut zero = c;
    zero.services6[0].backends[0].weight = 0;
    assert!(matches!(err(zero), ConfigError::ZeroWeight { .. }));
}

#[test]
fn ipv6_addresses_that_are_no_single_remote_host_are_refused() {
    for (addr, why) in [
        ("[::]:80", ":: is no host"),
        ("[::1]:80", "loopback"),
        ("[ff02::1]:80", "multicast"),
        ("[fe80::1]:80", "link-local"),
        ("[::ffff:198.18.0.100]:80", "IPv4-mapped"),
        ("[2001:2:0:1::100]:0", "port 0"),
        ("[2001:2:0:2::11%3]:8080", "scope"),
    ] {
        let mut c = with_services(SERVICE6).unwrap();
        c.services6[0].address = addr.parse().unwrap();
        let e = err(c);
        assert!(matches!(e, ConfigError::BadServiceAddress { .. }), "{e}");
        assert!(e.to_string().contains(why), "{addr}: {e}");
        let mut c = with_services(SERVICE6).unwrap();
        c.services6[0].backends[0].addr = addr.parse().unwrap();
        let e = err(c);
        assert!(matches!(e, ConfigError::BadBackendAddress { .. }), "{e}");
    }
}

#[test]
fn services_of_both_families_share_the_steering_limits() {
    let mut c = base();
    let v4 = c.services.len();
    c.services6 = (0..=MAX_SERVICES as usize - v4)
        .map(|i| ServiceConfig {
            address: SocketAddrV6::new(
                std::net::Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 1, i as u16),
                80,
                0,
                0,
            ),
            protocol: Protocol::Tcp,
            policy: PolicyKind::RoundRobin,
            backends: vec![BackendSpec {
                addr: SocketAddrV6::new(
                    std::net::Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 1, i as u16),
                    80,
                    0,
                    0,
                ),
                weight: 1,
            }],
            health: ServiceHealth::default(),
        })
        .collect();
    let e = err(c);
    assert!(
        matches!(e, ConfigError::TooManyServices { services } if services == MAX_SERVICES as usize + 1),
        "{e}"
    );
}

#[test]
fn dual_stack_config_prints_and_reads_back_the_same() {
    let c = with_services(&format!(
        "[[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n{SERVICE6}\
         [[service]]\naddress = \"[2001:2:0:1::100]:53\"\nprotocol = \"udp\"\n\
         backends = [\"[2001:2:0:2::21]:53\"]\n"
    ))
    .unwrap();
    let text = c.to_toml().unwrap();
    assert!(text.contains("\"[2001:2:0:2::12]:8080@2\""), "{text}");
    assert_eq!(Config::from_toml_str(&text).unwrap(), c);
}

#[test]
fn worker_priority_is_a_fifo_priority_for_a_sleeping_worker() {
    let mut c = base();
    c.worker_priority = Some(10);
    let e = c.validate().unwrap_err();
    assert!(
        e.to_string()
            .contains("worker_priority needs poll = \"wakeup\""),
        "{e}"
    );
    c.poll = PollMode::Busy;
    assert!(
        c.validate().is_err(),
        "busy polling at SCHED_FIFO starves the NAPI"
    );
    c.poll = PollMode::Wakeup;
    c.validate().unwrap();
    for bad in [0, 100] {
        c.worker_priority = Some(bad);
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("worker_priority = {bad} is out of range 1..=99")),
            "{e}"
        );
    }
    c.worker_priority = Some(99);
    c.validate().unwrap();
}

#[test]
fn worker_priority_from_the_file() {
    let file = "front = \"l0\"\nback = \"l1\"\npoll = \"wakeup\"\nworker_priority = 20\n\
                [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n";
    let c = Config::from_toml_str(file).unwrap();
    assert_eq!(c.worker_priority, Some(20));
    let e = Config::from_toml_str(&file.replace("poll = \"wakeup\"\n", "")).unwrap_err();
    assert!(e.to_string().contains("needs poll"), "{e:#}");
}

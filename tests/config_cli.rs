//! The config file format, its error messages, and the `run` flags merged over it.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use dispatchd::{
    balance::{BackendSpec, PolicyKind},
    config::{
        BindMode, Config, ConfigError, HttpProbe, PollMode, ProbeKind, Protocol, ReplyMode,
        RunArgs, ServiceHealth, XdpMode, DEFAULT_BATCH,
    },
};

#[derive(Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    run: RunArgs,
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dispatchd.toml")
}

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn be(s: &str, weight: u32) -> BackendSpec {
    BackendSpec { addr: a(s), weight }
}

/// Writes `text` to a fresh file under the target dir and returns its path.
fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn cli(args: &[&str]) -> RunArgs {
    let argv = std::iter::once("dispatchd").chain(args.iter().copied());
    TestCli::try_parse_from(argv).unwrap().run
}

fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
    cli(args).resolve()
}

fn parse_err(text: &str) -> (ConfigError, String) {
    let e = Config::from_toml_str(text).unwrap_err();
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "error must be one line: {msg:?}");
    (e, msg)
}

const HEAD: &str = "front = \"l0\"\nback = \"l1\"\n";

// ---------------------------------------------------------------- example file

#[test]
fn example_file_loads() {
    let c = Config::load(&example_path()).unwrap();
    assert_eq!(c.front, "l0");
    assert_eq!(c.back, "l1");
    assert_eq!(c.queues, None);
    assert_eq!(c.cores, vec![2, 3]);
    assert_eq!(c.control_core, Some(0));
    assert_eq!(c.bind_mode, BindMode::Auto);
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert_eq!(c.poll, PollMode::Adaptive);
    assert_eq!(c.reply_mode, ReplyMode::Stateless);
    assert_eq!(c.services.len(), 3);
    let s = &c.services[0];
    assert_eq!(s.address, a("198.18.0.100:80"));
    assert_eq!(s.policy, PolicyKind::WeightedRoundRobin);
    assert_eq!(
        s.backends,
        vec![
            be("198.19.0.11:8080", 1),
            be("198.19.0.12:8080", 3),
            be("198.19.0.13:8080", 2)
        ]
    );
    assert_eq!(
        s.health.kind,
        ProbeKind::Http(HttpProbe {
            path: "/health".into(),
            status: vec![200..=200],
            host: None,
        })
    );
    assert_eq!(s.health.port, Some(8081));
    assert_eq!(c.services[1].policy, PolicyKind::Maglev);
    assert_eq!(c.services[1].health.kind, ProbeKind::Tcp);
    assert_eq!(c.services[1].health.schedule, c.control.health);
    assert_eq!(c.services[1].protocol, Protocol::Tcp);
    assert_eq!(c.services[2].protocol, Protocol::Udp);
    assert_eq!(c.services[2].address, a("198.18.0.100:53"));
    assert_eq!(c.control.timeouts.udp_idle, Duration::from_secs(300));
}

#[test]
fn example_file_through_resolve_is_the_same() {
    let path = example_path();
    let c = resolve(&["--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(c, Config::load(&path).unwrap());
}

// ---------------------------------------------------------------- file errors

#[test]
fn missing_file() {
    let e = Config::load(Path::new("/nonexistent/dispatchd.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/dispatchd.toml") && msg.contains("cannot read"),
        "{msg}"
    );
}

/// `dispatchd ARGS...`: its exit status, stdout and stderr.
fn dispatchd(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status, text(out.stdout), text(out.stderr))
}

#[test]
fn missing_file_says_the_os_error_once() {
    for args in [
        &["check-config", "/nonexistent/dispatchd.toml"][..],
        &["run", "--config", "/nonexistent/dispatchd.toml"],
    ] {
        let (status, _, err) = dispatchd(args);
        assert!(!status.success());
        assert_eq!(
            err,
            "dispatchd: config /nonexistent/dispatchd.toml: cannot read: \
             No such file or directory (os error 2)\n",
            "{args:?}"
        );
    }
}

#[test]
fn check_config_refuses_addresses_that_are_no_single_host() {
    let cases = [
        (
            "198.18.0.100:0",
            "198.19.0.11:8080",
            "service 198.18.0.100:0: port 0 is no port a TCP connection can use",
        ),
        (
            "198.18.0.100:80",
            "0.0.0.0:8080",
            "backend 0.0.0.0:8080 of service 198.18.0.100:80: 0.0.0.0 is no host's address",
        ),
        (
            "198.18.0.100:80",
            "255.255.255.255:8080",
            "backend 255.255.255.255:8080 of service 198.18.0.100:80: \
             255.255.255.255 is the broadcast address, not one host's",
        ),
        (
            "198.18.0.100:80",
            "224.0.0.5:8080",
            "backend 224.0.0.5:8080 of service 198.18.0.100:80: \
             224.0.0.0/4 is multicast, not one host's address",
        ),
    ];
    for (i, (service, daemon, message)) in cases.into_iter().enumerate() {
        let text = format!("{HEAD}{}", svc(service, &format!("[\"{daemon}\"]")));
        let path = write_tmp(&format!("not_one_host_{i}.toml"), &text);
        let (status, out, err) = dispatchd(&["check-config", path.to_str().unwrap()]);
        assert!(!status.success(), "{service} {daemon}: {out}");
        assert_eq!(err, format!("dispatchd: {message}\n"));
    }
}

#[test]
fn timeout_errors_give_the_values() {
    let text = format!(
        "{HEAD}[health]\ninterval_ms = 300\ntimeout_ms = 450\n{}",
        svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
    );
    let (_, msg) = parse_err(&text);
    assert_eq!(
        msg,
        "health.timeout_ms = 450 is longer than health.interval_ms = 300: \
         a probe must end before the next one starts"
    );
    for key in ["syn_ms", "idle_ms", "linger_ms", "rst_linger_ms"] {
        let text = format!(
            "{HEAD}[timeouts]\n{key} = 0\n{}",
            svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
        );
        let (_, msg) = parse_err(&text);
        assert_eq!(
            msg,
            format!("timeouts.{key} = 0: must be greater than zero")
        );
    }
    for key in ["rise", "fall"] {
        let text = format!(
            "{HEAD}[health]\n{key} = 0\n{}",
            svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
        );
        let (_, msg) = parse_err(&text);
        assert_eq!(msg, format!("health.{key} = 0: must be greater than zero"));
    }
}

#[test]
fn unreadable_file_is_a_directory() {
    let e = Config::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let path = write_tmp("syntax.toml", "front = \"l0\"\nback = \n");
    let e = Config::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(path.to_str().unwrap()) && msg.contains("line 2"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let (e, msg) = parse_err("front = \"a\"\nfront = \"b\"\n");
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }));
    assert!(msg.contains("front"), "{msg}");
}

#[test]
fn unknown_top_level_key() {
    let path = write_tmp("unknown.toml", &format!("{HEAD}foo = 1\n"));
    let e = Config::load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ConfigError::UnknownKey { line: 3, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "config {}: unknown key `foo` at line 3",
            path.display()
        )),
        "{msg}"
    );
}

#[test]
fn unknown_key_in_service() {
    let (e, msg) = parse_err(&format!(
        "{HEAD}[[service]]\naddress = \"1.2.3.4:80\"\nbakends = []\n"
    ));
    assert!(matches!(e, ConfigError::UnknownKey { line: 5, .. }));
    assert!(
        msg.contains("`bakends`") && msg.contains("`backends`"),
        "{msg}"
    );
}

#[test]
fn unknown_key_in_backend_table() {
    let (e, msg) = parse_err(&format!(
        "{HEAD}[[service]]\naddress = \"1.2.3.4:80\"\nbackends = [{{ address = \"1.1.1.1:1\", wieght = 2 }}]\n"
    ));
    assert!(matches!(e, ConfigError::UnknownKey { line: 5, .. }));
    assert!(msg.contains("`wieght`"), "{msg}");
}

#[test]
fn missing_service_address() {
    let (e, msg) = parse_err(&format!("{HEAD}[[service]]\nbackends = [\"1.1.1.1:1\"]\n"));
    assert!(matches!(e, ConfigError::MissingKey { .. }));
    assert!(msg.contains("`address`"), "{msg}");
}

#[test]
fn bad_value_types() {
    let (e, msg) = parse_err(&format!("{HEAD}queues = \"four\"\n"));
    assert!(matches!(e, ConfigError::BadValue { line: 3, .. }));
    assert!(
        msg.contains("queues = \"four\"") && msg.contains("line 3"),
        "{msg}"
    );

    let (e, msg) = parse_err(&format!("{HEAD}poll = \"sometimes\"\n"));
    assert!(matches!(e, ConfigError::BadValue { .. }));
    assert!(
        msg.contains("sometimes") && msg.contains("adaptive"),
        "{msg}"
    );

    let (e, msg) = parse_err(&format!(
        "{HEAD}[[service]]\naddress = \"1.2.3.4:80\"\npolicy = \"fastest\"\n"
    ));
    assert!(matches!(e, ConfigError::BadValue { line: 5, .. }));
    assert!(msg.contains("fastest") && msg.contains("maglev"), "{msg}");

    let (e, msg) = parse_err(&format!("{HEAD}[[service]]\naddress = \"1.2.3.4\"\n"));
    assert!(matches!(e, ConfigError::BadValue { line: 4, .. }));
    assert!(
        msg.contains("\"1.2.3.4\"") && msg.contains("ADDR:PORT"),
        "{msg}"
    );

    let (e, msg) = parse_err(&format!(
        "{HEAD}[[service]]\naddress = \"1.2.3.4:80\"\nbackends = [5]\n"
    ));
    assert!(matches!(e, ConfigError::BadValue { .. }));
    assert!(msg.contains("integer `5`"), "{msg}");

    let (e, _) = parse_err(&format!("{HEAD}queues = -1\n"));
    assert!(matches!(e, ConfigError::BadValue { .. }));
}

// ---------------------------------------------------------------- validation via file

fn svc(address: &str, backends: &str) -> String {
    format!("[[service]]\naddress = \"{address}\"\nbackends = {backends}\n")
}

#[test]
fn no_services() {
    let (e, msg) = parse_err(HEAD);
    assert!(matches!(e, ConfigError::NoServices));
    assert!(
        msg.contains("[[service]]") && msg.contains("--service"),
        "{msg}"
    );
}

#[test]
fn duplicate_service() {
    let text = format!(
        "{HEAD}{}{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#),
        svc("10.0.0.1:80", r#"["10.0.1.2:80"]"#)
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::DuplicateService { .. }));
    assert!(msg.contains("10.0.0.1:80"), "{msg}");
}

#[test]
fn service_without_backends() {
    for backends in ["[]", ""] {
        let text = if backends.is_empty() {
            format!("{HEAD}[[service]]\naddress = \"10.0.0.1:80\"\n")
        } else {
            format!("{HEAD}{}", svc("10.0.0.1:80", backends))
        };
        let (e, msg) = parse_err(&text);
        assert!(matches!(e, ConfigError::NoBackends { .. }));
        assert_eq!(msg, "service 10.0.0.1:80 has no backends");
    }
}

#[test]
fn duplicate_backend_in_service() {
    let text = format!(
        "{HEAD}{}",
        svc(
            "10.0.0.1:80",
            r#"["10.0.1.1:80", { address = "10.0.1.1:80", weight = 2 }]"#
        )
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::DuplicateBackend { .. }));
    assert_eq!(
        msg,
        "backend 10.0.1.1:80 is listed twice in service 10.0.0.1:80"
    );
}

/// `[[service]]` with `protocol = "udp"`.
fn udp_svc(address: &str, backends: &str) -> String {
    format!("[[service]]\naddress = \"{address}\"\nprotocol = \"udp\"\nbackends = {backends}\n")
}

#[test]
fn a_backend_serves_a_tcp_and_a_udp_service() {
    // A DNS server on 53 over both, IPv4 and IPv6.
    let text = format!(
        "{HEAD}{}{}{}{}",
        svc("198.18.0.100:53", r#"["198.19.0.11:53"]"#),
        udp_svc("198.18.0.100:53", r#"["198.19.0.11:53"]"#),
        svc("[2001:2:0:1::100]:53", r#"["[2001:2:0:2::11]:53"]"#),
        udp_svc("[2001:2:0:1::100]:53", r#"["[2001:2:0:2::11]:53"]"#),
    );
    let c = Config::from_toml_str(&text).expect("one service of each protocol");
    assert_eq!((c.services.len(), c.services6.len()), (2, 2));
}

#[test]
fn backend_in_two_udp_services() {
    let text = format!(
        "{HEAD}{}{}{}",
        udp_svc("198.18.0.100:53", r#"["198.19.0.11:53"]"#),
        svc("198.18.0.101:53", r#"["198.19.0.11:53"]"#),
        udp_svc("198.18.0.101:53", r#"["198.19.0.11:53"]"#),
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::BackendInTwoServices { .. }));
    assert_eq!(
        msg,
        "backend 198.19.0.11:53 (udp) is listed in services 198.18.0.100:53 and \
         198.18.0.101:53; a daemon ADDR:PORT serves one service of each protocol"
    );
}

#[test]
fn backend_in_two_services() {
    let text = format!(
        "{HEAD}{}{}",
        svc("198.18.0.100:80", r#"["198.19.0.11:8080"]"#),
        svc(
            "198.18.0.101:80",
            r#"["198.19.0.12:8080", "198.19.0.11:8080"]"#
        )
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::BackendInTwoServices { .. }));
    assert_eq!(
        msg,
        "backend 198.19.0.11:8080 (tcp) is listed in services 198.18.0.100:80 and \
         198.18.0.101:80; a daemon ADDR:PORT serves one service of each protocol"
    );
}

#[test]
fn zero_weight() {
    for backends in [
        r#"[{ address = "10.0.1.1:80", weight = 0 }]"#,
        r#"["10.0.1.1:80@0"]"#,
    ] {
        let (e, msg) = parse_err(&format!("{HEAD}{}", svc("10.0.0.1:80", backends)));
        assert!(matches!(e, ConfigError::ZeroWeight { .. }));
        assert!(
            msg.contains("10.0.1.1:80") && msg.contains("weight 0"),
            "{msg}"
        );
    }
}

#[test]
fn backend_equals_a_service() {
    let text = format!(
        "{HEAD}{}{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#),
        svc("10.0.0.2:80", r#"["10.0.0.1:80"]"#)
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::BackendIsService { .. }));
    assert!(
        msg.contains("backend 10.0.0.1:80 of service 10.0.0.2:80"),
        "{msg}"
    );
}

fn with_service(extra: &str) -> String {
    format!(
        "{HEAD}{extra}\n{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#)
    )
}

type Case = (&'static str, fn(&ConfigError) -> bool, &'static str);

#[test]
fn scalar_rules_via_file() {
    let cases: &[Case] = &[
        (
            "queues = 0",
            |e| matches!(e, ConfigError::QueuesOutOfRange { .. }),
            "queues = 0",
        ),
        (
            "queues = 65",
            |e| matches!(e, ConfigError::QueuesOutOfRange { .. }),
            "1..=64",
        ),
        (
            "cores = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64]",
            |e| matches!(e, ConfigError::TooManyCores { cores: 65 }),
            "at most 64 workers",
        ),
        (
            "queues = 2\ncores = [1, 1]",
            |e| matches!(e, ConfigError::DuplicateCore { core: 1 }),
            "core 1",
        ),
        (
            "control_core = 1024",
            |e| matches!(e, ConfigError::ControlCoreOutOfRange { core: 1024 }),
            "control_core = 1024",
        ),
        (
            "frames_per_queue = 1000",
            |e| matches!(e, ConfigError::FramesNotPowerOfTwo { .. }),
            "frames_per_queue = 1000",
        ),
        (
            "frames_per_queue = 64",
            |e| matches!(e, ConfigError::FramesTooSmall { .. }),
            "2 * batch = 128",
        ),
        (
            "frames_per_queue = 2097152",
            |e| matches!(e, ConfigError::FramesTooLarge { .. }),
            "1048576",
        ),
        (
            "batch = 0",
            |e| matches!(e, ConfigError::BatchOutOfRange { .. }),
            "batch = 0",
        ),
        (
            "batch = 257",
            |e| matches!(e, ConfigError::BatchOutOfRange { .. }),
            "1..=256",
        ),
        (
            "flow_capacity = 0",
            |e| matches!(e, ConfigError::ZeroFlowCapacity),
            "flow_capacity",
        ),
    ];
    for (extra, is, needle) in cases {
        let (e, msg) = parse_err(&with_service(extra));
        assert!(is(&e), "{extra}: {e:?}");
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
}

#[test]
fn bad_interface_names_via_file() {
    for (front, needle) in [
        ("eth0/1", "'/'"),
        ("", "empty"),
        ("averyveryverylongname", "15 bytes"),
        ("eth 0", "whitespace"),
    ] {
        let text = format!(
            "front = {front:?}\nback = \"l1\"\n{}",
            svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#)
        );
        let (e, msg) = parse_err(&text);
        assert!(
            matches!(e, ConfigError::BadInterface { field: "front", .. }),
            "{e:?}"
        );
        assert!(msg.contains("front") && msg.contains(needle), "{msg}");
    }
}

#[test]
fn front_equals_back() {
    let text = format!(
        "front = \"eth0\"\nback = \"eth0\"\n{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#)
    );
    let (e, msg) = parse_err(&text);
    assert!(matches!(e, ConfigError::SameInterface { .. }));
    assert!(msg.contains("\"eth0\""), "{msg}");
}

// ---------------------------------------------------------------- flags only

const FLAGS: &[&str] = &[
    "--front",
    "eth0",
    "--back",
    "eth1",
    "--service",
    "10.0.0.1:80",
    "--backend",
    "10.0.1.1:80",
    "--backend",
    "10.0.1.2:80@3",
];

#[test]
fn flags_only() {
    let c = resolve(FLAGS).unwrap();
    assert_eq!(c.front, "eth0");
    assert_eq!(c.back, "eth1");
    assert_eq!(c.queues, None);
    assert_eq!(c.batch, DEFAULT_BATCH);
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].address, a("10.0.0.1:80"));
    assert_eq!(c.services[0].policy, PolicyKind::RoundRobin);
    assert_eq!(
        c.services[0].backends,
        vec![be("10.0.1.1:80", 1), be("10.0.1.2:80", 3)]
    );
}

#[test]
fn flags_only_all_scalars() {
    let mut args = FLAGS.to_vec();
    args.extend([
        "--queues",
        "4",
        "--cores",
        "4,5,6,7",
        "--control-core",
        "3",
        "--policy",
        "least_connections",
        "--bind-mode",
        "zerocopy",
        "--xdp-mode",
        "native",
        "--poll",
        "busy",
        "--flow-capacity",
        "1000",
        "--frames-per-queue",
        "8192",
        "--batch",
        "32",
        "--reply-mode",
        "tracked",
    ]);
    let c = resolve(&args).unwrap();
    assert_eq!(c.queues, Some(4));
    assert_eq!(c.cores, vec![4, 5, 6, 7]);
    assert_eq!(c.control_core, Some(3));
    assert_eq!(c.services[0].policy, PolicyKind::LeastConnections);
    assert_eq!(c.bind_mode, BindMode::Zerocopy);
    assert_eq!(c.xdp_mode, XdpMode::Native);
    assert_eq!(c.poll, PollMode::Busy);
    assert_eq!(c.flow_capacity, 1000);
    assert_eq!(c.frames_per_queue, 8192);
    assert_eq!(c.batch, 32);
    assert_eq!(c.reply_mode, ReplyMode::Tracked);
}

#[test]
fn flags_only_missing_each_required_flag() {
    for (flag, at) in [("--front", 0), ("--back", 2), ("--service", 4)] {
        let mut args = FLAGS.to_vec();
        args.drain(at..at + 2);
        let e = resolve(&args).unwrap_err();
        assert!(
            matches!(e, ConfigError::MissingFlag { flag: f } if f == flag),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("{flag} is required when no --config file is given")
        );
    }
    let e = resolve(&["--front", "a", "--back", "b"]).unwrap_err();
    assert!(
        matches!(e, ConfigError::MissingFlag { flag: "--service" }),
        "{e:?}"
    );
}

#[test]
fn service_without_backend_flag() {
    let e = resolve(&["--front", "a", "--back", "b", "--service", "10.0.0.1:80"]).unwrap_err();
    assert!(matches!(e, ConfigError::ServiceWithoutBackend { .. }));
    assert_eq!(
        e.to_string(),
        "--service 10.0.0.1:80 needs at least one --backend"
    );
    // Also with a file.
    let p = example_arg();
    let e = resolve(&["--config", &p, "--service", "10.0.0.1:80"]).unwrap_err();
    assert!(matches!(e, ConfigError::ServiceWithoutBackend { .. }));
}

#[test]
fn flag_values_are_validated() {
    let mut args = FLAGS.to_vec();
    args.extend(["--queues", "0"]);
    assert!(matches!(
        resolve(&args).unwrap_err(),
        ConfigError::QueuesOutOfRange { .. }
    ));

    let mut args = FLAGS.to_vec();
    args.extend(["--backend", "10.0.1.3:80@0"]);
    assert!(matches!(
        resolve(&args).unwrap_err(),
        ConfigError::ZeroWeight { .. }
    ));

    let mut args = FLAGS.to_vec();
    args[3] = "eth0";
    assert!(matches!(
        resolve(&args).unwrap_err(),
        ConfigError::SameInterface { .. }
    ));

    let mut args = FLAGS.to_vec();
    args.extend(["--mss-clamp", "535"]);
    let e = resolve(&args).unwrap_err();
    assert!(
        matches!(e, ConfigError::MssClampOutOfRange { mss: 535 }),
        "{e}"
    );
}

#[test]
fn worker_priority_flag_needs_the_wakeup_poll() {
    let mut args = FLAGS.to_vec();
    args.extend(["--worker-priority", "10"]);
    let e = resolve(&args).unwrap_err();
    assert!(matches!(e, ConfigError::WorkerPriorityNeedsWakeup), "{e}");
    args.extend(["--poll", "wakeup"]);
    assert_eq!(resolve(&args).unwrap().worker_priority, Some(10));
    // Unset: the ordinary scheduler, whatever the poll.
    assert_eq!(resolve(FLAGS).unwrap().worker_priority, None);
}

#[test]
fn mss_clamp_flag_over_the_file() {
    let p = example_arg();
    // The example leaves it out: off.
    assert_eq!(resolve(&["--config", &p]).unwrap().mss_clamp, None);
    let c = resolve(&["--config", &p, "--mss-clamp", "1240"]).unwrap();
    assert_eq!(c.mss_clamp, Some(1240));
    let file = write_tmp(
        "mss_clamp.toml",
        &format!(
            "{HEAD}mss_clamp = 1400\n{}",
            svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
        ),
    );
    let file = file.to_str().unwrap();
    assert_eq!(resolve(&["--config", file]).unwrap().mss_clamp, Some(1400));
    let c = resolve(&["--config", file, "--mss-clamp", "1240"]).unwrap();
    assert_eq!(c.mss_clamp, Some(1240), "the flag wins");
    let mut args = FLAGS.to_vec();
    args.extend(["--mss-clamp", "1300"]);
    assert_eq!(resolve(&args).unwrap().mss_clamp, Some(1300));
}

#[test]
fn stop_grace_defaults_to_none_merges_and_is_bounded() {
    let p = example_arg();
    // The example leaves it out: SIGTERM stops at once.
    let c = resolve(&["--config", &p]).unwrap();
    assert_eq!(c.control.stop_grace, Duration::ZERO);
    let file = write_tmp(
        "stop_grace.toml",
        &format!(
            "{HEAD}stop_grace_ms = 3000\n{}",
            svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
        ),
    );
    let file = file.to_str().unwrap();
    let c = resolve(&["--config", file]).unwrap();
    assert_eq!(c.control.stop_grace, Duration::from_secs(3));
    let c = resolve(&["--config", file, "--stop-grace-ms", "500"]).unwrap();
    assert_eq!(
        c.control.stop_grace,
        Duration::from_millis(500),
        "the flag wins"
    );
    let mut args = FLAGS.to_vec();
    args.extend(["--stop-grace-ms", "600000"]);
    assert_eq!(
        resolve(&args).unwrap().control.stop_grace,
        Duration::from_secs(600)
    );
    let mut args = FLAGS.to_vec();
    args.extend(["--stop-grace-ms", "600001"]);
    let e = resolve(&args).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::StopGraceTooLong {
                ms: 600_001,
                max_ms: 600_000
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "stop_grace_ms = 600001 is longer than 600000 ms (the most a graceful stop may take)"
    );
    let (e, _) = parse_err(&format!(
        "{HEAD}stop_grace_ms = -1\n{}",
        svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
    ));
    assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
}

#[test]
fn clap_rejects_malformed_flags() {
    let parse = |args: &[&str]| {
        TestCli::try_parse_from(std::iter::once("dispatchd").chain(args.iter().copied()))
            .unwrap_err()
            .to_string()
    };
    let msg = parse(&["--backend", "10.0.1.1"]);
    assert!(
        msg.contains("--backend") && msg.contains("ADDR:PORT"),
        "{msg}"
    );
    let msg = parse(&["--backend", "10.0.1.1:80@heavy"]);
    assert!(msg.contains("heavy"), "{msg}");
    let msg = parse(&["--policy", "fastest"]);
    assert!(msg.contains("maglev"), "{msg}");
    let msg = parse(&["--bind-mode", "fast"]);
    assert!(msg.contains("zerocopy"), "{msg}");
    let msg = parse(&["--service", "10.0.0.1"]);
    assert!(msg.contains("--service"), "{msg}");
}

// ---------------------------------------------------------------- flags over a file

fn example_arg() -> String {
    example_path().to_str().unwrap().to_owned()
}

#[test]
fn scalar_flags_override_file() {
    let p = example_arg();
    let c = resolve(&[
        "--config",
        &p,
        "--front",
        "eth9",
        "--queues",
        "3",
        "--cores",
        "7,8,9",
        "--poll",
        "wakeup",
        "--batch",
        "16",
        "--frames-per-queue",
        "1024",
        "--xdp-mode",
        "skb",
        "--bind-mode",
        "copy",
        "--flow-capacity",
        "77",
        "--reply-mode",
        "tracked",
    ])
    .unwrap();
    let file = Config::load(&example_path()).unwrap();
    assert_eq!(c.front, "eth9");
    assert_eq!(c.back, file.back);
    assert_eq!(c.queues, Some(3));
    assert_eq!(c.cores, vec![7, 8, 9]);
    assert_eq!(c.poll, PollMode::Wakeup);
    assert_eq!(c.batch, 16);
    assert_eq!(c.frames_per_queue, 1024);
    assert_eq!(c.xdp_mode, XdpMode::Skb);
    assert_eq!(c.bind_mode, BindMode::Copy);
    assert_eq!(c.flow_capacity, 77);
    assert_eq!(c.reply_mode, ReplyMode::Tracked);
    assert_eq!(c.services, file.services);
}

#[test]
fn tracked_replies_beyond_the_kernel_maps_limit_are_refused() {
    let e = resolve(&[
        "--front",
        "l0",
        "--back",
        "l1",
        "--service",
        "198.18.0.100:80",
        "--backend",
        "198.19.0.11:8080",
        "--queues",
        "64",
        "--flow-capacity",
        "2097153",
        "--reply-mode",
        "tracked",
    ])
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::TrackedTooLarge { connections } if connections == 64 * 2_097_153),
        "{e}"
    );
    assert!(e.to_string().contains("134217728"), "{e}");
}

/// Queues and worker cores are independent: a worker may serve several queues.
#[test]
fn queues_flag_keeps_the_file_cores() {
    let p = example_arg();
    let file = Config::load(&example_path()).unwrap();
    let c = resolve(&["--config", &p, "--queues", "4"]).unwrap();
    assert_eq!(c.queues, Some(4));
    assert_eq!(c.cores, file.cores);
}

#[test]
fn service_and_backends_replace_file_services() {
    let p = example_arg();
    let c = resolve(&[
        "--config",
        &p,
        "--service",
        "10.9.0.1:53",
        "--backend",
        "10.9.1.1:53",
        "--backend",
        "10.9.1.2:53@2",
    ])
    .unwrap();
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].address, a("10.9.0.1:53"));
    assert_eq!(c.services[0].policy, PolicyKind::RoundRobin);
    assert_eq!(
        c.services[0].backends,
        vec![be("10.9.1.1:53", 1), be("10.9.1.2:53", 2)]
    );
    assert_eq!(c.front, "l0");
}

#[test]
fn backends_without_service_replace_the_single_service_backends() {
    let path = write_tmp(
        "one_service.toml",
        &format!(
            "{HEAD}[[service]]\naddress = \"10.0.0.1:80\"\npolicy = \"maglev\"\nbackends = [\"10.0.1.1:80\"]\n"
        ),
    );
    let c = resolve(&[
        "--config",
        path.to_str().unwrap(),
        "--backend",
        "10.0.1.5:80",
        "--backend",
        "10.0.1.6:80@4",
    ])
    .unwrap();
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].address, a("10.0.0.1:80"));
    assert_eq!(c.services[0].policy, PolicyKind::Maglev);
    assert_eq!(
        c.services[0].backends,
        vec![be("10.0.1.5:80", 1), be("10.0.1.6:80", 4)]
    );
}

#[test]
fn backends_without_service_need_exactly_one_file_service() {
    let p = example_arg(); // three services
    let e = resolve(&["--config", &p, "--backend", "10.0.1.5:80"]).unwrap_err();
    assert!(
        matches!(e, ConfigError::BackendsWithoutService { services: 3 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("found 3"), "{e}");

    let path = write_tmp("no_service.toml", HEAD);
    let e = resolve(&[
        "--config",
        path.to_str().unwrap(),
        "--backend",
        "10.0.1.5:80",
    ])
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::BackendsWithoutService { services: 0 }),
        "{e:?}"
    );
}

#[test]
fn service_flags_complete_a_file_without_services() {
    let path = write_tmp("no_service2.toml", HEAD);
    let c = resolve(&[
        "--config",
        path.to_str().unwrap(),
        "--service",
        "10.0.0.1:80",
        "--backend",
        "10.0.1.1:80",
    ])
    .unwrap();
    assert_eq!(c.services.len(), 1);
}

#[test]
fn policy_flag_applies_to_every_service() {
    let p = example_arg();
    let c = resolve(&["--config", &p, "--policy", "least_connections"]).unwrap();
    assert_eq!(c.services.len(), 3);
    assert!(c
        .services
        .iter()
        .all(|s| s.policy == PolicyKind::LeastConnections));

    let c = resolve(&[
        "--config",
        &p,
        "--policy",
        "maglev",
        "--service",
        "10.9.0.1:53",
        "--backend",
        "10.9.1.1:53",
    ])
    .unwrap();
    assert_eq!(c.services[0].policy, PolicyKind::Maglev);
}

#[test]
fn interfaces_from_flags_complete_a_file_without_them() {
    let path = write_tmp("no_ifaces.toml", &svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#));
    let p = path.to_str().unwrap();
    let e = resolve(&["--config", p]).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Unset {
                key: "front",
                flag: "--front"
            }
        ),
        "{e:?}"
    );
    let e = resolve(&["--config", p, "--front", "a"]).unwrap_err();
    assert!(matches!(e, ConfigError::Unset { key: "back", .. }), "{e:?}");
    let c = resolve(&["--config", p, "--front", "a", "--back", "b"]).unwrap();
    assert_eq!((c.front.as_str(), c.back.as_str()), ("a", "b"));
}

#[test]
fn missing_config_file_via_flag() {
    let e = resolve(&["--config", "/nonexistent/x.toml"]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/x.toml"));
}

// ---------------------------------------------------------------- check-config --print

#[test]
fn check_config_prints_the_effective_config_which_loads_as_the_same() {
    let p = example_arg();
    let flags = [
        "--queues",
        "4",
        "--policy",
        "maglev",
        "--mss-clamp",
        "1400",
        "--health-interval-ms",
        "250",
    ];
    let (status, out, err) =
        dispatchd(&[&["check-config", p.as_str(), "--print"][..], &flags[..]].concat());
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with(&format!("# {p}: ok (3 service(s), ")),
        "{out}"
    );
    let printed = Config::from_toml_str(&out).unwrap();
    let merged = resolve(&[&["--config", p.as_str()][..], &flags[..]].concat()).unwrap();
    assert_eq!(printed, merged);
    // Defaults and flags are written out, not left implicit.
    for line in [
        "queues = 4",
        "mss_clamp = 1400",
        "policy = \"maglev\"",
        "interval_ms = 250",
        "timeout_ms = 250",
        "syn_ms = 10000",
        "\"198.19.0.11:8080@1\"",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == line || l.contains(line)),
            "{line}: {out}"
        );
    }

    // The same through --config, and from flags alone.
    let (_, via_flag, _) =
        dispatchd(&[&["check-config", "--config", &p, "--print"][..], &flags[..]].concat());
    assert_eq!(via_flag, out);
    let only_flags = [
        "--front",
        "a0",
        "--back",
        "b0",
        "--service",
        "10.0.0.1:80",
        "--backend",
        "10.0.1.1:80@2",
    ];
    let (status, out, err) =
        dispatchd(&[&["check-config", "--print"][..], &only_flags[..]].concat());
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with("# flags: ok (1 service(s), 1 daemon(s))"),
        "{out}"
    );
    assert_eq!(
        Config::from_toml_str(&out).unwrap(),
        resolve(&only_flags).unwrap()
    );
}

#[test]
fn check_config_without_print_says_ok_and_refuses_two_files() {
    let p = example_arg();
    let (status, out, _) = dispatchd(&["check-config", &p]);
    assert!(status.success());
    assert_eq!(out, format!("{p}: ok (3 service(s), 7 daemon(s))\n"));
    let (status, _, err) = dispatchd(&["check-config", &p, "--config", &p]);
    assert!(!status.success());
    assert!(err.contains("cannot be used with"), "{err}");
    // A flag's error is the same one line as `run`'s.
    let (status, _, err) = dispatchd(&["check-config", &p, "--batch", "0"]);
    assert!(!status.success());
    assert_eq!(err, "dispatchd: batch = 0 is out of range 1..=256\n");
}

/// `--takeover` is a way to start, not a setting: it changes nothing of the
/// resolved configuration (the control socket names the process to replace).
#[test]
fn takeover_is_a_flag_that_leaves_the_config_alone() {
    let base = [
        "t",
        "--front",
        "l0",
        "--back",
        "l1",
        "--service",
        "198.18.0.100:80",
        "--backend",
        "198.19.0.11:8080",
    ];
    let plain = TestCli::try_parse_from(base).unwrap().run;
    let with = TestCli::try_parse_from(base.iter().copied().chain(["--takeover"]))
        .unwrap()
        .run;
    assert!(!plain.takeover && with.takeover);
    assert_eq!(plain.resolve().unwrap(), with.resolve().unwrap());
}

// ---------------------------------------------------------------- [service.health]

/// A file with one service whose `[service.health]` table is `body`, after a
/// `[health]` table `global`.
fn with_health(global: &str, body: &str) -> String {
    format!(
        "{HEAD}[health]\n{global}\n{}[service.health]\n{body}\n",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#)
    )
}

fn health_of(text: &str) -> ServiceHealth {
    let c = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.services[0].health.clone()
}

#[test]
fn a_service_without_a_health_table_gets_tcp_on_the_global_values() {
    let text = format!(
        "{HEAD}[health]\ninterval_ms = 700\ntimeout_ms = 300\nrise = 4\nfall = 5\n{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#)
    );
    let h = health_of(&text);
    assert_eq!(h.kind, ProbeKind::Tcp);
    assert_eq!(h.port, None);
    assert_eq!(
        (h.schedule.interval, h.schedule.timeout),
        (Duration::from_millis(700), Duration::from_millis(300))
    );
    assert_eq!((h.schedule.rise, h.schedule.fall), (4, 5));
}

#[test]
fn http_keys_default_and_the_schedule_inherits_per_key() {
    let h = health_of(&with_health(
        "interval_ms = 700\ntimeout_ms = 300\nrise = 4\nfall = 5",
        "kind = \"http\"\nfall = 1",
    ));
    assert_eq!(
        h.kind,
        ProbeKind::Http(HttpProbe {
            path: "/".into(),
            status: vec![200..=200],
            host: None,
        })
    );
    assert_eq!(h.schedule.fall, 1);
    assert_eq!(h.schedule.rise, 4);
    assert_eq!(h.schedule.interval, Duration::from_millis(700));

    let h = health_of(&with_health(
        "",
        "kind = \"http\"\npath = \"/health?full=1\"\nstatus = 204\nhost = \"app.example\"\n\
         port = 8081\ninterval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 2",
    ));
    assert_eq!(
        h.kind,
        ProbeKind::Http(HttpProbe {
            path: "/health?full=1".into(),
            status: vec![204..=204],
            host: Some("app.example".into()),
        })
    );
    assert_eq!(h.port, Some(8081));
    assert_eq!(
        (
            h.schedule.interval,
            h.schedule.timeout,
            h.schedule.rise,
            h.schedule.fall
        ),
        (Duration::from_millis(200), Duration::from_millis(150), 1, 2)
    );
    // A TCP check may have its own port too.
    assert_eq!(health_of(&with_health("", "port = 22")).port, Some(22));
}

#[test]
fn status_may_be_a_list_of_codes_and_ranges() {
    let status = |written: &str| match health_of(&with_health(
        "",
        &format!("kind = \"http\"\nstatus = {written}"),
    ))
    .kind
    {
        ProbeKind::Http(h) => h,
        other => panic!("{other:?}"),
    };
    let h = status(r#"[200, 204, "300-399"]"#);
    assert_eq!(h.status, vec![200..=200, 204..=204, 300..=399]);
    assert!(h.passes(204) && h.passes(302) && !h.passes(201) && !h.passes(400));
    assert_eq!(status(r#""200-299""#).status, vec![200..=299]);
    assert_eq!(status(r#"" 200 - 299 ""#).status, vec![200..=299]);
    assert_eq!(status("[503]").status, vec![503..=503]);
}

#[test]
fn an_inherited_timeout_fits_a_shorter_service_interval() {
    // The global timeout (500 ms) would be longer than the service's interval.
    let h = health_of(&with_health("", "interval_ms = 200"));
    assert_eq!(h.schedule.timeout, Duration::from_millis(200));
    let h = health_of(&with_health("timeout_ms = 100", "interval_ms = 200"));
    assert_eq!(h.schedule.timeout, Duration::from_millis(100));
}

/// Every rule of `[service.health]`: the error names the service, the key
/// and the value.
#[test]
fn each_service_health_rule_is_enforced_with_service_and_key_named() {
    let cases: &[(&str, &str, &str)] = &[
        // (table body, key named, words of the reason)
        (
            "kind = \"http\"\npath = \"health\"",
            "health.path = \"health\"",
            "must start with '/'",
        ),
        (
            "kind = \"http\"\npath = \"\"",
            "health.path = \"\"",
            "must start with '/'",
        ),
        (
            "kind = \"http\"\npath = \"/a b\"",
            "health.path = \"/a b\"",
            "spaces or control characters",
        ),
        (
            "kind = \"http\"\npath = \"/a\\r\\nX: y\"",
            "health.path",
            "spaces or control characters",
        ),
        (
            "kind = \"http\"\npath = \"/a\\nb\"",
            "health.path",
            "(CR, LF)",
        ),
        (
            "kind = \"http\"\nhost = \"a b\"",
            "health.host = \"a b\"",
            "spaces or control characters",
        ),
        (
            "kind = \"http\"\nhost = \"a\\r\\nX: y\"",
            "health.host",
            "(CR, LF)",
        ),
        (
            "kind = \"http\"\nhost = \"\"",
            "health.host",
            "must not be empty",
        ),
        (
            "kind = \"http\"\nstatus = 99",
            "health.status = 99",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = 600",
            "health.status = 600",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = 70000",
            "health.status = 70000",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = -1",
            "health.status = -1",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = [200, 600]",
            "health.status = 600",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = \"200-600\"",
            "health.status = 200-600",
            "100..=599",
        ),
        (
            "kind = \"http\"\nstatus = \"299-200\"",
            "health.status = 299-200",
            "from low to high",
        ),
        (
            "kind = \"http\"\nstatus = \"2xx\"",
            "health.status = \"2xx\"",
            "a range \"LOW-HIGH\"",
        ),
        (
            "kind = \"http\"\nstatus = [\"200-\"]",
            "health.status = \"200-\"",
            "a range \"LOW-HIGH\"",
        ),
        (
            "kind = \"http\"\nstatus = []",
            "health.status = []",
            "at least one code",
        ),
        ("port = 0", "health.port = 0", "1..=65535"),
        ("port = 65536", "health.port = 65536", "1..=65535"),
        (
            "kind = \"http\"\nport = -5",
            "health.port = -5",
            "1..=65535",
        ),
        (
            "interval_ms = 100\ntimeout_ms = 200",
            "health.timeout_ms = 200",
            "longer than interval_ms = 100",
        ),
        (
            "interval_ms = 0",
            "health.interval_ms = 0",
            "greater than zero",
        ),
        (
            "timeout_ms = 0",
            "health.timeout_ms = 0",
            "greater than zero",
        ),
        ("rise = 0", "health.rise = 0", "greater than zero"),
        ("fall = 0", "health.fall = 0", "greater than zero"),
        (
            "path = \"/x\"",
            "health.path = \"/x\"",
            "only an HTTP check",
        ),
        ("status = 200", "health.status = 200", "only an HTTP check"),
        (
            "kind = \"tcp\"\nhost = \"h\"",
            "health.host = \"h\"",
            "only an HTTP check",
        ),
    ];
    for (body, key, reason) in cases {
        let (e, msg) = parse_err(&with_health("", body));
        assert!(
            matches!(e, ConfigError::BadServiceHealth { .. }),
            "{body}: {e:?}"
        );
        assert!(msg.starts_with("service 10.0.0.1:80: "), "{body}: {msg}");
        assert!(msg.contains(key), "{body}: {msg}");
        assert!(msg.contains(reason), "{body}: {msg}");
    }
    // The longest path and host pass; one byte more does not.
    let long = |n: usize| "a".repeat(n);
    let ok = format!(
        "kind = \"http\"\npath = \"/{}\"\nhost = \"{}\"",
        long(1023),
        long(255)
    );
    assert!(Config::from_toml_str(&with_health("", &ok)).is_ok());
    let (_, msg) = parse_err(&with_health(
        "",
        &format!("kind = \"http\"\npath = \"/{}\"", long(1024)),
    ));
    assert!(
        msg.contains("health.path = 1025 bytes: longer than 1024 bytes"),
        "{msg}"
    );
    let (_, msg) = parse_err(&with_health(
        "",
        &format!("kind = \"http\"\nhost = \"{}\"", long(256)),
    ));
    assert!(
        msg.contains("health.host = 256 bytes: longer than 255 bytes"),
        "{msg}"
    );
}

#[test]
fn unknown_kind_and_unknown_keys_in_the_health_table_are_refused() {
    let (e, msg) = parse_err(&with_health("", "kind = \"icmp\""));
    assert!(matches!(e, ConfigError::BadValue { .. }), "{e:?}");
    assert!(
        msg.contains("icmp") && msg.contains("tcp") && msg.contains("http"),
        "{msg}"
    );
    let (e, msg) = parse_err(&with_health("", "kind = \"http\"\nexpect = 200"));
    assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
    assert!(msg.contains("`expect`") && msg.contains("status"), "{msg}");
}

#[test]
fn check_config_print_writes_every_service_health_key_and_loads_as_the_same() {
    let text = format!(
        "{HEAD}[health]\nfall = 4\n{}[service.health]\nkind = \"http\"\npath = \"/health\"\n\
         status = 204\nhost = \"app.example\"\nport = 8081\ninterval_ms = 300\n{}\
         [service.health]\nkind = \"http\"\nstatus = [200, \"300-399\"]\n{}",
        svc("10.0.0.1:80", r#"["10.0.1.1:80"]"#),
        svc("10.0.0.2:80", r#"["10.0.1.2:80"]"#),
        svc("10.0.0.3:80", r#"["10.0.1.3:80"]"#),
    );
    let p = write_tmp("service-health.toml", &text);
    let (status, out, err) = dispatchd(&["check-config", p.to_str().unwrap(), "--print"]);
    assert!(status.success(), "{err}");
    assert_eq!(
        Config::from_toml_str(&out).unwrap(),
        Config::from_toml_str(&text).unwrap()
    );
    for line in [
        "[service.health]",
        "kind = \"http\"",
        "path = \"/health\"",
        "status = 204",
        "host = \"app.example\"",
        "port = 8081",
        "interval_ms = 300",
        "kind = \"tcp\"",
        "fall = 4",
        "status = [200, \"300-399\"]",
    ] {
        assert!(out.lines().any(|l| l.trim() == line), "{line}: {out}");
    }
    assert_eq!(out.matches("[service.health]").count(), 3, "{out}");
    // The last service's table is the global one written out.
    let second = &out[out.rfind("[service.health]").unwrap()..];
    assert!(
        second.contains("kind = \"tcp\"") && !second.contains("path"),
        "{second}"
    );
}

#[test]
fn state_file_is_off_by_default_set_by_file_or_flag_and_validated() {
    let p = example_arg();
    let c = resolve(&["--config", &p]).unwrap();
    assert_eq!(
        c.control.state_file.as_deref(),
        None,
        "the example only shows it, commented out"
    );
    let mut args = FLAGS.to_vec();
    assert_eq!(resolve(&args).unwrap().control.state_file, None);
    let file = write_tmp(
        "state_file.toml",
        &format!(
            "{HEAD}state_file = \"/var/lib/dispatchd/state.json\"\n{}",
            svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
        ),
    );
    let file = file.to_str().unwrap();
    let c = resolve(&["--config", file]).unwrap();
    assert_eq!(
        c.control.state_file.as_deref(),
        Some(Path::new("/var/lib/dispatchd/state.json"))
    );
    let c = resolve(&["--config", file, "--state-file", "/srv/lb/state.json"]).unwrap();
    assert_eq!(
        c.control.state_file.as_deref(),
        Some(Path::new("/srv/lb/state.json")),
        "the flag wins"
    );
    args.extend(["--state-file", "relative/state.json"]);
    let e = resolve(&args).unwrap_err();
    assert_eq!(
        e.to_string(),
        "state_file relative/state.json: not an absolute path (it would depend on where dispatchd was started)"
    );
    let (e, msg) = parse_err(&format!(
        "{HEAD}state_file = \"/run/dispatchd/dispatchd.sock\"\n{}",
        svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
    ));
    assert!(matches!(e, ConfigError::BadStateFile { .. }), "{e}");
    assert_eq!(
        msg,
        "state_file /run/dispatchd/dispatchd.sock: is the control socket's path"
    );
    let (e, _) = parse_err(&format!(
        "{HEAD}state_file = 3\n{}",
        svc("198.18.0.100:80", "[\"198.19.0.11:8080\"]")
    ));
    assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
}

#[test]
fn ipv6_service_and_daemons_from_the_flags() {
    let c = resolve(&[
        "--front",
        "a",
        "--back",
        "b",
        "--service",
        "[2001:2:0:1::100]:80",
        "--backend",
        "[2001:2:0:2::11]:8080",
        "--backend",
        "[2001:2:0:2::12]:8080@3",
    ])
    .unwrap();
    assert!(c.services.is_empty());
    let s = &c.services6[0];
    assert_eq!(s.address.to_string(), "[2001:2:0:1::100]:80");
    let daemons: Vec<_> = (s.backends.iter())
        .map(|b| (b.addr.to_string(), b.weight))
        .collect();
    assert_eq!(
        daemons,
        [
            ("[2001:2:0:2::11]:8080".to_owned(), 1),
            ("[2001:2:0:2::12]:8080".to_owned(), 3)
        ]
    );

    let e = resolve(&[
        "--front",
        "a",
        "--back",
        "b",
        "--service",
        "[2001:2:0:1::100]:80",
        "--backend",
        "198.19.0.11:8080",
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "backend 198.19.0.11:8080 of service [2001:2:0:1::100]:80: a service and its daemons \
         are of one family (IPv4 or IPv6); dispatchd does not translate between them"
    );
}

#[test]
fn check_config_prints_an_ipv6_service_that_loads_back() {
    let (status, out, err) = dispatchd(&[
        "check-config",
        "--print",
        "--front",
        "a",
        "--back",
        "b",
        "--service",
        "[2001:2:0:1::100]:80",
        "--backend",
        "[2001:2:0:2::11]:8080@2",
    ]);
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with("# flags: ok (1 service(s), 1 daemon(s))"),
        "{out}"
    );
    assert!(out.contains("address = \"[2001:2:0:1::100]:80\""), "{out}");
    assert!(out.contains("\"[2001:2:0:2::11]:8080@2\""), "{out}");
    let printed = write_tmp("v6p-printed.toml", &out);
    let again = Config::load(&printed).unwrap();
    assert_eq!(
        again,
        resolve(&[
            "--front",
            "a",
            "--back",
            "b",
            "--service",
            "[2001:2:0:1::100]:80",
            "--backend",
            "[2001:2:0:2::11]:8080@2",
        ])
        .unwrap()
    );
}

#[test]
fn run_takes_an_ipv6_service_on_to_the_host_checks() {
    let (status, _, err) = dispatchd(&[
        "run",
        "--front",
        "v6pnone0",
        "--back",
        "v6pnone1",
        "--service",
        "[2001:2:0:1::100]:80",
        "--backend",
        "[2001:2:0:2::11]:8080",
    ]);
    assert!(!status.success());
    // Not refused for its family: it gets as far as the interfaces.
    assert!(
        err.ends_with(
            "dispatchd: front: interface v6pnone0 not found: No such device (os error 19)\n"
        ),
        "{err}"
    );
}

/// `dispatchd ctl` names an IPv6 daemon in brackets and sends the line the
/// loop parses (a listener on a socket of the test's answers in its place);
/// an IPv6 address without brackets is refused before anything is sent.
#[test]
fn ctl_sends_ipv6_daemons_in_brackets() {
    use std::io::{BufRead, BufReader, Write};

    let dir = std::env::temp_dir().join(format!("dispatchd-ctl6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("ctl.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for _ in 0..3 {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            (&conn).write_all(b"ok\n").unwrap();
            lines.push(line.trim_end().to_owned());
        }
        lines
    });
    let socket_arg = socket.to_str().unwrap();
    for verb in [
        &["weight", "[2001:2:0:2::11]:8080", "3"][..],
        &["drain", "[2001:2:0:2::11]:8080"][..],
        &[
            "conns",
            "--daemon",
            "[2001:2:0:2::11]:8080",
            "--client",
            "2001:2:0:1::2",
        ][..],
    ] {
        let mut args = vec!["ctl", "--socket", socket_arg];
        args.extend_from_slice(verb);
        let (status, out, err) = dispatchd(&args);
        assert!(status.success(), "{verb:?}: {err}");
        assert_eq!(out, "ok\n");
    }
    assert_eq!(
        server.join().unwrap(),
        [
            "weight [2001:2:0:2::11]:8080 3",
            "drain [2001:2:0:2::11]:8080",
            "conns daemon=[2001:2:0:2::11]:8080 client=2001:2:0:1::2 limit=1000",
        ]
    );
    let (status, _, err) = dispatchd(&[
        "ctl",
        "--socket",
        socket_arg,
        "drain",
        "2001:2:0:2::11:8080",
    ]);
    assert!(!status.success());
    assert!(err.contains("invalid value '2001:2:0:2::11:8080'"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `IP:PORT`, `[IPv6]:PORT` and `HOST:PORT` from the command line, with an
//! error that says what is missing.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{given:?} is missing :PORT (for example {example})")]
    MissingPort { given: String, example: String },
    #[error("{given:?} is missing the address before :PORT (for example {example})")]
    MissingAddress { given: String, example: String },
    #[error("{given:?}: {port:?} is not a port number (1 to 65535)")]
    BadPort { given: String, port: String },
    #[error("cannot resolve {host:?}: {why}")]
    Unresolved { host: String, why: String },
    #[error("{given:?} is not an address: write IP:PORT, [IPv6]:PORT or HOST:PORT")]
    Malformed { given: String },
}

/// Parses an endpoint, resolving a host name with the system resolver
/// (the first address it returns).
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, EndpointError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(EndpointError::BadPort { given: s.to_string(), port: "0".into() });
        }
        return Ok(a);
    }
    let missing = |example: String| EndpointError::MissingPort { given: s.to_string(), example };
    // A bare port: the address is what is missing.
    if s.parse::<u16>().is_ok() {
        return Err(missing(format!("IP:{s}, such as 10.0.0.2:{s}")));
    }
    if let Some(port) = s.strip_prefix(':').filter(|p| p.parse::<u16>().is_ok()) {
        return Err(EndpointError::MissingAddress { given: s.to_string(), example: format!("10.0.0.2:{port}") });
    }
    // A bare address, IPv6 included ("fd00::2" has colons but no port). An
    // IPv6 address whose last group reads as a port was likely meant as one.
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        let split = s.rsplit_once(':').filter(|(head, tail)| {
            ip.is_ipv6()
                && !s.starts_with('[')
                && tail.len() >= 2
                && tail.parse::<u16>().is_ok()
                && head.parse::<IpAddr>().is_ok()
        });
        return Err(missing(match split {
            Some((head, tail)) => format!("[{head}]:{tail}"),
            None => SocketAddr::new(ip, 9000).to_string(),
        }));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        if s.is_empty() || s.contains(['[', ']', '/', ' ']) {
            return Err(EndpointError::Malformed { given: s.to_string() });
        }
        return Err(missing(format!("{s}:9000")));
    };
    if host.is_empty() || host.contains([':', '[', ']']) {
        return Err(EndpointError::Malformed { given: s.to_string() });
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(EndpointError::BadPort { given: s.to_string(), port: port.to_string() }),
    };
    let unresolved = |why: String| EndpointError::Unresolved { host: host.to_string(), why };
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| unresolved(e.to_string()))?;
    addrs.next().ok_or_else(|| unresolved("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_of_both_versions() {
        assert_eq!(parse_endpoint("10.77.0.2:9000"), Ok("10.77.0.2:9000".parse().unwrap()));
        assert_eq!(parse_endpoint("[fd00::2]:9000"), Ok("[fd00::2]:9000".parse().unwrap()));
        assert_eq!(parse_endpoint(" [::]:7 "), Ok("[::]:7".parse().unwrap()));
    }

    #[test]
    fn a_missing_port_is_named() {
        for (given, example) in [
            ("10.251.7.2", "10.251.7.2:9000"),
            ("fd00::2", "[fd00::2]:9000"),
            ("[fd00::2]", "[fd00::2]:9000"),
            ("localhost", "localhost:9000"),
            ("9000", "IP:9000, such as 10.0.0.2:9000"),
            ("fd00:77::2:9000", "[fd00:77::2]:9000"),
        ] {
            let e = parse_endpoint(given).unwrap_err();
            assert_eq!(e, EndpointError::MissingPort { given: given.into(), example: example.into() }, "{given}");
            assert!(e.to_string().contains("missing :PORT"), "{e}");
        }
    }

    #[test]
    fn bad_ports_and_shapes_are_refused() {
        assert!(matches!(parse_endpoint("10.0.0.1:0"), Err(EndpointError::BadPort { .. })));
        assert!(matches!(parse_endpoint("10.0.0.1:70000"), Err(EndpointError::BadPort { .. })));
        assert!(matches!(parse_endpoint("host:http"), Err(EndpointError::BadPort { .. })));
        assert!(matches!(parse_endpoint("fd00::2::9000x"), Err(EndpointError::Malformed { .. })));
        assert!(matches!(parse_endpoint(""), Err(EndpointError::Malformed { .. })));
        let e = parse_endpoint(":9000").unwrap_err();
        assert!(e.to_string().contains("missing the address") && e.to_string().contains("10.0.0.2:9000"), "{e}");
    }

    #[test]
    fn host_names_resolve() {
        // /etc/hosts names localhost on every Linux host; no network needed.
        let a = parse_endpoint("localhost:9000").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 9000, "{a}");
        assert!(matches!(parse_endpoint("no-such-host.invalid:9000"), Err(EndpointError::Unresolved { .. })));
    }
}

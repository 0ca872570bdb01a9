//! The environment overrides the configuration file. Its own test binary: setting a variable
//! is only sound while no other thread reads the environment, and this is the one test here.

use std::io::Write;

#[test]
fn environment_overrides_the_file() {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(b"upstream = 'from-file:1'\n").expect("write");
    let path = f.path().to_str().expect("utf-8 path").to_owned();

    let c = xmpp_veil::config_file::parse_from(["xmpp-veil", "--config", &path]).expect("parse");
    assert_eq!(c.upstream, "from-file:1");

    // SAFETY: the only test of this binary, run before any other thread reads the environment.
    unsafe { std::env::set_var("XMPP_VEIL_UPSTREAM", "from-env:1") };
    let c = xmpp_veil::config_file::parse_from(["xmpp-veil", "--config", &path]).expect("parse");
    assert_eq!(c.upstream, "from-env:1");
    // A flag still beats both.
    let c = xmpp_veil::config_file::parse_from([
        "xmpp-veil",
        "--config",
        &path,
        "--upstream",
        "from-flag:1",
    ])
    .expect("parse");
    assert_eq!(c.upstream, "from-flag:1");
}

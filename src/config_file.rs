//! The TOML configuration file (`--config FILE`, `XMPP_VEIL_CONFIG`).
//!
//! Generic over the flags: each key is a flag's long name (`upstream-tls`, or `upstream_tls`),
//! and its value becomes that flag's default before the command line is matched. So the
//! precedence is flag > environment > file > built-in default, and a flag added to
//! [`Config`] is available in the file without any change here. Unknown keys are an error.

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, CommandFactory, FromArgMatches};

use crate::config::Config;

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum Error {
    /// From clap itself (bad flag, `--help`, `--version`): print it with [`clap::Error::exit`].
    Clap(clap::Error),
    /// From the file: a message naming the file and the key.
    File(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Clap(e) => write!(f, "{e}"),
            Error::File(e) => write!(f, "{e}"),
        }
    }
}

/// Parses the process's arguments, with the file named by `--config` or `XMPP_VEIL_CONFIG`.
pub fn parse() -> Result<Config, Error> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Result<Config, Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Config::command();
    // A first pass only to learn the file's name (errors are reported by the real pass).
    let pre = Config::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok();
    let path = pre.as_ref().and_then(|m| {
        m.get_one::<std::path::PathBuf>("config")
            .cloned()
            .or_else(|| {
                m.subcommand()
                    .and_then(|(_, sub)| sub.get_one::<std::path::PathBuf>("config").cloned())
            })
    });
    if let Some(path) = path {
        cmd = apply_file(cmd, &path)?;
    }
    let matches = cmd.try_get_matches_from(&args).map_err(Error::Clap)?;
    Config::from_arg_matches(&matches).map_err(Error::Clap)
}

/// Sets every key of the file as the default of the flag it names.
fn apply_file(mut cmd: clap::Command, path: &Path) -> Result<clap::Command, Error> {
    let file = |msg: String| Error::File(format!("{}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| file(e.to_string()))?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                file(format!(
                    "unknown key {key:?} (keys are the long flags of `xmpp-veil --help`)"
                ))
            })?;
        let id = arg.get_id().clone();
        let many = matches!(arg.get_action(), ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        let values: Vec<String> = match value {
            toml::Value::Array(items) if many => items
                .into_iter()
                .map(scalar)
                .collect::<Result<_, _>>()
                .map_err(|e| file(format!("{key}: {e}")))?,
            toml::Value::Array(_) => {
                return Err(file(format!("{key}: takes one value, not a list")));
            }
            other => vec![scalar(other).map_err(|e| file(format!("{key}: {e}")))?],
        };
        let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        if flag {
            if !matches!(values.as_slice(), [v] if v == "true" || v == "false") {
                return Err(file(format!("{key}: expected true or false")));
            }
        } else {
            // Checked here with the flag's own parser (a lone copy of the flag), so that the
            // message names the file and the key.
            let alone = arg
                .clone()
                .requires(clap::builder::Resettable::Reset)
                .required(false)
                .env(None);
            for v in &values {
                clap::Command::new("file")
                    .no_binary_name(true)
                    .arg(alone.clone())
                    .try_get_matches_from([format!("--{long}={v}")])
                    .map_err(|e| {
                        let e = e.to_string();
                        let first = e.lines().next().unwrap_or_default();
                        file(format!(
                            "{key} = {v:?}: {}",
                            first.trim_start_matches("error: ")
                        ))
                    })?;
            }
        }
        cmd = cmd.mut_arg(id, |a| a.required(false).default_values(values));
    }
    Ok(cmd)
}

fn scalar(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, not {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamTls;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse(args: &[&str]) -> Result<Config, Error> {
        parse_from(std::iter::once("xmpp-veil").chain(args.iter().copied()))
    }

    #[test]
    fn every_flag_is_a_key_and_flags_override_the_file() {
        let f = file(
            "upstream = 'xmpp.example.org:5222'\nupstream-tls = 'plain'\nlisten = ['127.0.0.1:1', '[::1]:2']\n\
             max_stanza_size = 100000\nupstream-insecure = true\nshutdown-timeout = 2.5\n",
        );
        let path = f.path().to_str().unwrap();
        let c = parse(&["--config", path]).unwrap();
        assert_eq!(c.upstream, "xmpp.example.org:5222");
        assert_eq!(c.upstream_tls, UpstreamTls::Plain);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_stanza_size, 100_000);
        assert!(c.upstream_insecure);
        assert_eq!(c.shutdown_timeout, 2.5);
        // Not in the file: the built-in default.
        assert_eq!(c.max_depth, 64);
        let c = parse(&[
            "--config",
            path,
            "--upstream-tls",
            "direct",
            "--listen",
            "127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!(c.upstream_tls, UpstreamTls::Direct);
        assert_eq!(c.listen, vec!["127.0.0.1:3".parse().unwrap()]);
        // After the subcommand too.
        let c = parse(&["check", "--config", path]).unwrap();
        assert!(matches!(c.command, Some(crate::config::Command::Check)));
        assert_eq!(c.upstream, "xmpp.example.org:5222");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_the_key() {
        for (text, expect) in [
            (
                "upstream = 'h:1'\nupstrem-tls = 'plain'\n",
                "unknown key \"upstrem-tls\"",
            ),
            ("upstream = 'h:1'\nconfig = 'x'\n", "unknown key \"config\""),
            (
                "upstream = 'h:1'\nupstream-tls = 'sometimes'\n",
                "upstream-tls = \"sometimes\"",
            ),
            ("upstream = 'h:1'\nmax-depth = 1\n", "max-depth = \"1\""),
            ("upstream = ['h:1', 'h:2']\n", "upstream: takes one value"),
            ("upstream = 'h:1\n", "TOML parse error"),
        ] {
            let f = file(text);
            match parse(&["--config", f.path().to_str().unwrap()]) {
                Err(Error::File(e)) => {
                    assert!(e.contains(expect), "{text:?}: {e}");
                    assert!(e.contains(&f.path().display().to_string()), "{e}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        match parse(&["--config", "/nonexistent/xmpp-veil.toml"]) {
            Err(Error::File(e)) => assert!(e.contains("/nonexistent/xmpp-veil.toml"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod example {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/xmpp-veil.toml");

    #[test]
    fn the_example_parses_and_mentions_every_flag() {
        let c = parse_from(["xmpp-veil", "--config", EXAMPLE]).expect("examples/xmpp-veil.toml");
        assert_eq!(c.upstream, "127.0.0.1:5222");
        assert_eq!(c.cert.len(), c.key.len());
        // Every flag is documented in it (set or commented out), so the file cannot drift.
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let missing: Vec<String> = Config::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config" && *l != "help" && *l != "version")
            .filter(|l| {
                !text.lines().any(|line| {
                    line.trim_start_matches("# ")
                        .starts_with(&format!("{l} = "))
                })
            })
            .map(str::to_owned)
            .collect();
        assert!(
            missing.is_empty(),
            "flags not in examples/xmpp-veil.toml: {missing:?}"
        );
    }
}

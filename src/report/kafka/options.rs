//! `--kafka-option KEY=VALUE`: librdkafka client properties the operator passes through (TLS,
//! SASL and the like), checked at start-up. A property that verve sets itself, or that would
//! weaken the delivery guarantee (see the `kafka` module), is refused; librdkafka judges the
//! rest when the clients are made. Secret values are never shown: not in the start-up line,
//! not in an error, not in a `Debug` print.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;

/// What a secret value is shown as.
pub const MASK: &str = "***";

/// The environment variable that holds a list of options when no `--kafka-option` is given.
pub const ENV: &str = "VERVE_KAFKA_OPTION";

/// Why a property is not the operator's to set. A name ending in `*` covers every property
/// it begins (librdkafka's aliases and the whole family).
const REFUSED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set by --kafka-brokers"),
    ("metadata.broker.list", "set by --kafka-brokers"),
    (
        "acks",
        "verve produces with acks=all: a record is delivered once every in-sync replica has it",
    ),
    (
        "request.required.acks",
        "verve produces with acks=all: a record is delivered once every in-sync replica has it",
    ),
    (
        "enable.idempotence",
        "verve's producer is idempotent: a record resent after a lost answer is stored once",
    ),
    (
        "enable.gapless.guarantee",
        "it turns recoverable gaps into fatal errors, and each fatal error replaces the \
         producer, which may store the record it held twice",
    ),
    (
        "message.timeout.ms",
        "verve never times a record out (0): one given up and produced again would get a new \
         sequence number and could be stored twice",
    ),
    (
        "delivery.timeout.ms",
        "verve never times a record out (0): one given up and produced again would get a new \
         sequence number and could be stored twice",
    ),
    (
        "retries",
        "librdkafka retries a record until it is acknowledged: one given up and produced \
         again could be stored twice",
    ),
    (
        "message.send.max.retries",
        "librdkafka retries a record until it is acknowledged: one given up and produced \
         again could be stored twice",
    ),
    (
        "max.in.flight*",
        "verve has one record in flight at a time, which keeps the windows in order",
    ),
    (
        "queue.buffering.max.*",
        "verve bounds librdkafka's queue itself (records wait in --kafka-backlog) and hands \
         each record over at once",
    ),
    (
        "linger.ms",
        "verve hands records over one at a time: a linger would only delay each",
    ),
    (
        "queuing.strategy",
        "records must leave in the order they were produced",
    ),
    (
        "delivery.report.only.error",
        "verve waits for each record's acknowledgement before it sends the next",
    ),
    (
        "transactional.id",
        "verve's producer is idempotent, not transactional",
    ),
    (
        "transaction.timeout.ms",
        "verve's producer is idempotent, not transactional",
    ),
    (
        "enabled_events",
        "verve reads acknowledgements and errors from librdkafka's events",
    ),
    (
        "log_level",
        "verve sets it, and counts librdkafka's warnings as errors; use debug=CONTEXT,... to \
         see more",
    ),
    (
        "log.queue",
        "verve takes librdkafka's log lines as they come",
    ),
    (
        "internal.termination.signal",
        "verve owns its signals (SIGTERM and SIGINT shut it down)",
    ),
    (
        "plugin.library.paths",
        "a plugin can change any property, these included",
    ),
];

/// Substrings of the properties whose values are secrets: passwords, client secrets, private
/// keys and what librdkafka itself treats as sensitive (PEM contents, the OAUTHBEARER
/// configuration).
const SECRET_MARKS: &[&str] = &[
    "password",
    "secret",
    "passphrase",
    ".pem",
    "private.key",
    "oauthbearer.config",
    "ssl_key",
];

/// Whether the value of property `key` is a secret, never to be shown.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_MARKS.iter().any(|mark| key.contains(mark))
}

/// Why verve refuses property `key`, if it does. librdkafka also takes a topic property with
/// a `topic.` prefix, so that spelling is refused too.
pub fn refusal(key: &str) -> Option<&'static str> {
    let names = [Some(key), key.strip_prefix("topic.")];
    names.into_iter().flatten().find_map(|name| {
        REFUSED.iter().find_map(|(refused, why)| {
            let hit = match refused.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *refused,
            };
            hit.then_some(*why)
        })
    })
}

/// One option as given: `KEY=VALUE`. Its `Display` and `Debug` show a secret value as
/// [`MASK`].
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    key: String,
    /// `None`: there was no `=` (refused by [`check`]).
    value: Option<String>,
}

impl KafkaOption {
    pub fn new(key: &str, value: &str) -> KafkaOption {
        KafkaOption {
            key: key.to_owned(),
            value: Some(value.to_owned()),
        }
    }

    /// Splits a `--kafka-option` value at its first `=`. It never fails: clap would echo the
    /// whole value in its message, and the value may be a secret; [`check`] finds the fault.
    pub fn given(s: &str) -> Result<KafkaOption, Infallible> {
        Ok(match s.split_once('=') {
            Some((key, value)) => KafkaOption::new(key.trim(), value),
            None => KafkaOption {
                key: s.trim().to_owned(),
                value: None,
            },
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value; empty for an option without `=`, which [`check`] refuses.
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or_default()
    }

    pub fn is_secret(&self) -> bool {
        is_secret(&self.key)
    }
}

impl fmt::Display for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.is_secret() { MASK } else { self.value() };
        write!(f, "{}={value}", self.key)
    }
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A `--kafka-option` that cannot be used, named by its key (never by its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--kafka-option{}: {why}", key.as_deref().map(|k| format!(" {k}")).unwrap_or_default())]
pub struct OptionError {
    /// The property at fault, when one is.
    pub key: Option<String>,
    pub why: String,
}

impl OptionError {
    pub fn new(key: Option<&str>, why: impl Into<String>) -> OptionError {
        OptionError {
            key: key.map(str::to_owned),
            why: why.into(),
        }
    }
}

/// A key that is shown in an error although it may be garbage: only when it looks like a
/// property name, so that a value pasted without its key is not echoed.
fn shown(key: &str) -> Option<&str> {
    let name_like = !key.is_empty()
        && key.len() <= 100
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    name_like.then_some(key)
}

/// Checks what verve can check before librdkafka sees the options: each is `KEY=VALUE`, none
/// is refused, none is given twice.
pub fn check(options: &[KafkaOption]) -> Result<(), OptionError> {
    let mut seen = HashSet::new();
    for option in options {
        let key = option.key();
        if option.value.is_none() || key.is_empty() {
            return Err(OptionError::new(
                shown(key),
                "is not KEY=VALUE (a librdkafka property, `=`, its value)",
            ));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(OptionError::new(
                None,
                "a property name has a space or a control character in it",
            ));
        }
        if let Some(why) = refusal(key) {
            return Err(OptionError::new(Some(key), format!("refused: {why}")));
        }
        if !seen.insert(key) {
            return Err(OptionError::new(Some(key), "given twice"));
        }
    }
    Ok(())
}

/// Splits `VERVE_KAFKA_OPTION`: options separated by commas, where `\,` is a comma inside a
/// value (`debug=broker\,topic`) and `\\` a backslash; any other backslash is itself.
pub fn split_list(s: &str) -> Vec<KafkaOption> {
    let mut entries = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let current = entries.last_mut().expect("never empty");
        match c {
            '\\' if matches!(chars.peek(), Some(',' | '\\')) => {
                current.push(chars.next().expect("peeked"));
            }
            ',' => entries.push(String::new()),
            c => current.push(c),
        }
    }
    entries
        .iter()
        .map(|e| match KafkaOption::given(e) {
            Ok(option) => option,
            Err(never) => match never {},
        })
        .collect()
}

/// Replaces every secret value of `options` in `text` (a message from librdkafka) by
/// [`MASK`].
pub fn redact(text: &str, options: &[KafkaOption]) -> String {
    let mut text = text.to_owned();
    for option in options.iter().filter(|o| o.is_secret()) {
        if !option.value().is_empty() {
            text = text.replace(option.value(), MASK);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(s: &str) -> KafkaOption {
        KafkaOption::given(s).unwrap()
    }

    #[test]
    fn the_list_splits_at_commas_but_not_escaped_ones() {
        let list =
            split_list(r"security.protocol=ssl,debug=broker\,topic,ssl.ca.location=C:\ca\\,x=1");
        let shown: Vec<(&str, &str)> = list.iter().map(|o| (o.key(), o.value())).collect();
        assert_eq!(
            shown,
            [
                ("security.protocol", "ssl"),
                ("debug", "broker,topic"),
                (r"ssl.ca.location", r"C:\ca\"),
                ("x", "1"),
            ]
        );
        // A value may hold `=` and spaces; only the key is trimmed.
        let list = split_list("sasl.oauthbearer.config=principal=a scope=b , b=c ");
        assert_eq!(list[0].value(), "principal=a scope=b ");
        assert_eq!((list[1].key(), list[1].value()), ("b", "c "));
        // A trailing comma is an empty entry, which the check refuses.
        assert!(check(&split_list("a.b=1,")).is_err());
    }

    #[test]
    fn what_weakens_delivery_or_is_verves_is_refused_with_its_aliases() {
        for key in [
            "acks",
            "request.required.acks",
            "topic.acks",
            "topic.request.required.acks",
            "enable.idempotence",
            "enable.gapless.guarantee",
            "message.timeout.ms",
            "delivery.timeout.ms",
            "topic.message.timeout.ms",
            "retries",
            "message.send.max.retries",
            "max.in.flight",
            "max.in.flight.requests.per.connection",
            "queue.buffering.max.messages",
            "queue.buffering.max.kbytes",
            "queue.buffering.max.ms",
            "linger.ms",
            "queuing.strategy",
            "delivery.report.only.error",
            "transactional.id",
            "transaction.timeout.ms",
            "bootstrap.servers",
            "metadata.broker.list",
            "enabled_events",
            "log_level",
            "log.queue",
            "internal.termination.signal",
            "plugin.library.paths",
        ] {
            let err = check(&[KafkaOption::new(key, "1")]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key));
            assert!(err
                .to_string()
                .starts_with(&format!("--kafka-option {key}: refused: ")));
            assert!(!err.to_string().contains("=1"), "{err}");
        }
        for key in [
            "security.protocol",
            "ssl.ca.location",
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
            "client.id",
            "debug",
            "compression.type",
            "socket.keepalive.enable",
            "request.timeout.ms",
            "message.max.bytes",
            "retry.backoff.ms",
            "acks.extra",
        ] {
            assert_eq!(check(&[KafkaOption::new(key, "x")]), Ok(()), "{key}");
        }
    }

    #[test]
    fn malformed_and_repeated_options_are_refused_without_their_values() {
        let err = check(&[opt("sasl.password")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("sasl.password"));
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        // Something that is not a property name is not echoed: it may be a pasted secret.
        let err = check(&[opt("hunter2 hunter2")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = check(&[opt("=hunter2")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = check(&[opt("sasl pass=hunter2")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = check(&[opt("sasl.password=a"), opt("sasl.password=b")]).unwrap_err();
        assert_eq!(err.to_string(), "--kafka-option sasl.password: given twice");
        assert_eq!(check(&[opt("debug=")]), Ok(()));
    }

    #[test]
    fn secrets_are_masked_wherever_an_option_is_shown() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "ssl.ca.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ] {
            let o = KafkaOption::new(key, "hunter2");
            assert!(o.is_secret(), "{key}");
            assert_eq!(o.to_string(), format!("{key}=***"));
            assert!(!format!("{o:?}").contains("hunter2"));
            assert!(!format!("{:?}", vec![o.clone()]).contains("hunter2"));
        }
        let user = KafkaOption::new("sasl.username", "verve");
        assert_eq!(user.to_string(), "sasl.username=verve");
        let options = [opt("sasl.password=hunter2"), opt("debug=hunter2")];
        assert_eq!(
            redact("bad value \"hunter2\" for sasl.password", &options),
            "bad value \"***\" for sasl.password"
        );
    }
}

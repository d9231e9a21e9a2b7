//! The Kafka reporter's settings (`--kafka-brokers`, `--kafka-topic`, `--kafka-backlog`,
//! `--kafka-option`), how they are checked, and the librdkafka configuration made of them,
//! where verve's delivery guarantee is set (see the `kafka` module). A client that librdkafka
//! will not make names the option at fault, its secrets masked.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use super::options::{self, KafkaOption, OptionError};

/// `--kafka-brokers`, `--kafka-topic`, `--kafka-backlog`, `--kafka-option`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT[,HOST:PORT...]`, librdkafka's `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// Most records kept while they cannot be delivered.
    pub backlog: usize,
    /// Passed to both clients; checked by [`options::check`] (its `Debug` masks secrets).
    pub options: Vec<KafkaOption>,
    /// `--state-file`: where records acknowledged or lost for good are recorded; those the
    /// process stops before delivering stay there and are produced after the restart.
    pub journal: Option<crate::state::writer::JournalSender>,
}

impl Settings {
    /// The start-up log line's account of the settings, secrets masked.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "brokers {}, topic {}, backlog {} records",
            self.brokers, self.topic, self.backlog
        );
        if !self.options.is_empty() {
            let options: Vec<String> = self.options.iter().map(|o| o.to_string()).collect();
            line.push_str(&format!(", options {}", options.join(" ")));
        }
        line
    }

    /// What the operator should hear about the options before the first record: settings
    /// that turn off the check of the broker's identity.
    pub fn warnings(&self) -> Vec<String> {
        self.options
            .iter()
            .filter(|o| {
                let value = o.value().to_ascii_lowercase();
                matches!(
                    (o.key(), value.as_str()),
                    // librdkafka's spellings of false.
                    ("enable.ssl.certificate.verification", "false" | "f" | "0")
                        | ("ssl.endpoint.identification.algorithm", "none")
                )
            })
            .map(|o| {
                format!(
                    "--kafka-option {o}: the broker's certificate or host name is not checked; \
                     anyone on the path can pose as the broker"
                )
            })
            .collect()
    }
}

/// Checks a `--kafka-brokers` value: comma-separated `HOST:PORT`, no spaces.
pub fn parse_brokers(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim) {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?} is not HOST:PORT"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{entry:?} has no valid host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("{entry:?} has no valid port")),
        }
        out.push(entry);
    }
    Ok(out.join(","))
}

/// Checks a `--kafka-topic` value by Kafka's own rules: 1 to 249 of `[a-zA-Z0-9._-]`, and
/// not `.` or `..`.
pub fn parse_topic(s: &str) -> Result<String, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > 249 || s == "." || s == ".." || !s.chars().all(legal) {
        return Err(
            "must be 1 to 249 of the characters a-z A-Z 0-9 . _ - (and not . or ..)".into(),
        );
    }
    Ok(s.to_owned())
}

/// The settings both clients share. The operator's options come after verve's defaults (so a
/// `client.id` of theirs wins) and before what verve owns (so nothing they pass can undo it,
/// even past [`options::check`]).
pub(super) fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", concat!("verve/", env!("CARGO_PKG_VERSION")))
        // Brokers close idle connections; that is not news.
        .set("log.connection.close", "false");
    for option in &settings.options {
        config.set(option.key(), option.value());
    }
    // rdkafka sets the level after librdkafka has made the client, overriding the one
    // librdkafka derives from `debug`: without this, its debug lines would never come.
    let debugging = settings.options.iter().any(|o| o.key() == "debug");
    config
        .set("bootstrap.servers", &settings.brokers)
        .set_log_level(if debugging {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Info
        });
    config
}

/// A client that librdkafka would not make, as an error. When the operator passed options,
/// they are the likely cause: an [`OptionError`] (a configuration error, exit 2) naming the
/// one librdkafka names, its secrets masked.
pub(super) fn creation_error(
    err: KafkaError,
    what: &str,
    options: &[KafkaOption],
) -> anyhow::Error {
    let (key, detail) = match &err {
        KafkaError::ClientConfig(_, desc, key, _) => (Some(key.clone()), desc.clone()),
        KafkaError::ClientCreation(msg) => (culprit(msg, options), msg.clone()),
        _ => (None, err.to_string()),
    };
    let detail = options::redact(&detail, options);
    if options.is_empty() {
        return anyhow::anyhow!("{what}: {detail}");
    }
    anyhow::Error::new(OptionError::new(
        key.as_deref(),
        format!("librdkafka: {detail}"),
    ))
}

/// The option a librdkafka message is about: the one whose name it holds ("ssl.ca.location
/// failed: ..."), else one whose value it holds ("No provider for SASL mechanism GSSAPI");
/// the longest match, and never by a secret's value.
fn culprit(msg: &str, options: &[KafkaOption]) -> Option<String> {
    /// Shorter values (`ssl`, `1`) turn up in messages about anything.
    const MIN_VALUE_LEN: usize = 4;
    let by_name = options
        .iter()
        .filter(|o| msg.contains(o.key()))
        .max_by_key(|o| o.key().len());
    let by_value = || {
        options
            .iter()
            .filter(|o| !o.is_secret() && o.value().len() >= MIN_VALUE_LEN)
            .filter(|o| msg.contains(o.value()))
            .max_by_key(|o| o.value().len())
    };
    by_name.or_else(by_value).map(|o| o.key().to_owned())
}

/// The producer's settings: [`client_config`] with the delivery guarantee.
pub(super) fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Never give up on a record librdkafka holds: see the module comment.
        .set("message.timeout.ms", "0")
        // It never holds more than one; the bound is for the record's sake, not memory's.
        .set("queue.buffering.max.messages", "16")
        .set("queue.buffering.max.kbytes", "64")
        .set("linger.ms", "0");
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_client_names_the_option_and_masks_secrets() {
        let options = [
            KafkaOption::new("security.protocol", "sasl_plaintext"),
            KafkaOption::new("sasl.mechanism", "GSSAPI"),
            KafkaOption::new("sasl.password", "GSSAPI-and-more"),
            KafkaOption::new("ssl.ca.location", "/etc/ca.pem"),
        ];
        let culprit = |msg: &str| culprit(msg, &options);
        assert_eq!(
            culprit("No provider for SASL mechanism GSSAPI: recompile").as_deref(),
            Some("sasl.mechanism")
        );
        assert_eq!(
            culprit("ssl.ca.location failed: /etc/ca.pem: no such file").as_deref(),
            Some("ssl.ca.location")
        );
        assert_eq!(culprit("Failed to create thread"), None);
        let err = creation_error(
            KafkaError::ClientCreation("bad: GSSAPI-and-more".into()),
            "creating the Kafka producer",
            &options,
        );
        let option = err.downcast_ref::<OptionError>().expect("an option error");
        assert_eq!(
            option.to_string(),
            "--kafka-option sasl.mechanism: librdkafka: bad: ***"
        );
        // Without options, the configuration is verve's own: not the operator's error.
        let err = creation_error(
            KafkaError::ClientCreation("Failed to create thread".into()),
            "creating the Kafka producer",
            &[],
        );
        assert!(!err.is::<OptionError>());
    }

    #[test]
    fn broker_lists_and_topics_are_checked() {
        assert_eq!(parse_brokers("a:9092, b:9093").unwrap(), "a:9092,b:9093");
        for bad in ["", "a", "a:", ":9092", "a:0", "a:x", "a:9092,", "a b:1"] {
            assert!(parse_brokers(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_topic("unique-requests").unwrap(), "unique-requests");
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(parse_topic(bad).is_err(), "{bad:?}");
        }
    }
}

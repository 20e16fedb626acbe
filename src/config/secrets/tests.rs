use super::*;
use crate::config::tests::{error, parse, TempPath, PATH};

#[test]
fn secrets_value_errors_name_the_secret_and_source() {
    let load = |text: &str| parse(text).load_secrets().unwrap_err().to_string();
    assert_eq!(
        load("[secrets]\n  a = { env = \"SBX_TEST_UNSET_VAR\" }\n"),
        format!("{PATH}:2:3: secret \"a\" from env SBX_TEST_UNSET_VAR: the variable is not set")
    );
    std::env::set_var("SBX_TEST_EMPTY_VAR", "");
    assert_eq!(
        load("[secrets]\na = { env = \"SBX_TEST_EMPTY_VAR\" }\n"),
        format!("{PATH}:2:1: secret \"a\" from env SBX_TEST_EMPTY_VAR: the value is empty")
    );
    std::env::set_var("SBX_TEST_NEWLINE_VAR", "abc\r\nX-Evil: 1");
    assert_eq!(
        load("[secrets]\na = { env = \"SBX_TEST_NEWLINE_VAR\" }\n"),
        format!("{PATH}:2:1: secret \"a\" from env SBX_TEST_NEWLINE_VAR: the value contains a control character, which cannot go in an HTTP header")
    );
    let missing = TempPath::new("missing.key");
    assert_eq!(
        load(&format!("[secrets]\nb = {{ file = \"{}\" }}\n", missing.0.display())),
        format!(
            "{PATH}:2:1: secret \"b\" from file {0}: cannot read {0}: No such file or directory (os error 2)",
            missing.0.display()
        )
    );
    let empty = TempPath::new("empty.key");
    fs::write(&empty.0, "\n").unwrap();
    assert_eq!(
        load(&format!(
            "[secrets]\nb = {{ file = \"{}\" }}\n",
            empty.0.display()
        )),
        format!(
            "{PATH}:2:1: secret \"b\" from file {}: the value is empty",
            empty.0.display()
        )
    );
}

#[test]
fn secret_definitions_are_checked() {
    let secret = |line: &str| error(&format!("[secrets]\n{line}\n"));
    assert_eq!(
        secret("a = { env = \"A\", file = \"/a\" }"),
        format!("t.toml:2:5: a secret has exactly one source; write {SECRET_FORMS}")
    );
    assert_eq!(
        secret("a = {}"),
        format!("t.toml:2:5: empty secret; write {SECRET_FORMS}")
    );
    let pasted = secret("a = \"sk-live-123\"");
    assert_eq!(
        pasted,
        format!("t.toml:2:5: a secret's value does not go in the config; write {SECRET_FORMS}")
    );
    assert!(!pasted.contains("sk-live"));
    assert_eq!(
        secret("a = { file = \"key.txt\" }"),
        "t.toml:2:14: path \"key.txt\" is not absolute"
    );
    assert_eq!(
        secret("a = { env = \"\" }"),
        "t.toml:2:5: invalid environment variable name \"\""
    );
    assert_eq!(
        secret("a = { credential = \"../x\" }"),
        "t.toml:2:5: invalid credential name \"../x\""
    );
    assert_eq!(
        secret("\"my.key\" = { env = \"A\" }"),
        "t.toml:2:1: invalid secret name \"my.key\"; use letters, digits, '_' and '-'"
    );
}

#[test]
fn secret_values_do_not_leak_through_debug() {
    let value = SecretValue::new("hunter2".into());
    assert_eq!(format!("{value:?}"), "<redacted>");
    let secrets = Secrets::of(&[("pw", "hunter2")]);
    let debug = format!("{secrets:?}");
    assert!(debug.contains("{\"pw\": <redacted>}"), "{debug}");
    assert!(!debug.contains("hunter2"));
}

use super::*;
use crate::config::tests::{error, parse, SECRETS};

/// An integration `aws` on `hosts` with `aws_sigv4 = { <fields> }`, after [`SECRETS`] (secret `key`):
/// the `aws_sigv4` line is line 6, its `{` at column 13.
fn aws(hosts: &str, fields: &str) -> String {
    format!(
        "{SECRETS}[[integration]]\nname = \"aws\"\nhosts = [{hosts}]\naws_sigv4 = {{ {fields} }}\n"
    )
}

const BEDROCK: &str = "\"bedrock-runtime.us-east-1.amazonaws.com\"";
const KEYS: &str = "access_key_id = \"AKIDEXAMPLE\", secret_access_key = \"key\"";

#[test]
fn the_designs_example_parses_and_keeps_names_not_values() {
    let config = parse(&aws(
        BEDROCK,
        &format!("{KEYS}, session_token = \"key\", region = \"us-east-1\", service = \"bedrock\""),
    ));
    let integration = &config.integrations[0];
    assert!(integration.headers.is_empty() && integration.basic_auth.is_none());
    assert_eq!(
        integration.aws_sigv4,
        Some(AwsSigV4 {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "key".into(),
            session_token: Some("key".into()),
            region: Some("us-east-1".into()),
            service: Some("bedrock".into()),
        })
    );
    let bare = parse(&aws(BEDROCK, KEYS));
    let signing = bare.integrations[0].aws_sigv4.as_ref().unwrap();
    assert_eq!(
        (&signing.session_token, &signing.region, &signing.service),
        (&None, &None, &None)
    );
}

#[test]
fn fields_are_checked_where_they_are_written() {
    assert_eq!(
        error(&aws(BEDROCK, &format!("{KEYS}, regoin = \"us-east-1\""))),
        "t.toml:6:73: unknown key \"regoin\" in aws_sigv4; expected one of: access_key_id, \
         secret_access_key, session_token, region, service"
    );
    assert_eq!(
        error(&aws(BEDROCK, "access_key_id = \"AKIDEXAMPLE\"")),
        "t.toml:6:13: missing key \"secret_access_key\""
    );
    assert_eq!(
        error(&aws(BEDROCK, &format!("{KEYS}, region = \"US-East-1\""))),
        "t.toml:6:82: region \"US-East-1\" is not an AWS region name (lower-case letters, digits and '-', \
         as in \"us-east-1\")"
    );
    assert_eq!(
        error(&aws(BEDROCK, &format!("{KEYS}, service = \"bed rock\""))),
        "t.toml:6:83: service \"bed rock\" is not an AWS service name (lower-case letters, digits and '-', \
         as in \"bedrock\")"
    );
}

#[test]
fn a_secret_field_names_a_defined_secret_and_never_repeats_its_value() {
    let pasted = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    for value in [
        pasted,
        "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
        "${secret:key}",
    ] {
        for (field, fields) in [
            (
                "secret_access_key",
                format!("access_key_id = \"AKIDEXAMPLE\", secret_access_key = \"{value}\""),
            ),
            (
                "session_token",
                format!("{KEYS}, session_token = \"{value}\""),
            ),
        ] {
            let message = error(&aws(BEDROCK, &fields));
            assert!(
                message.contains(&format!("{field} must name a secret of [secrets]")),
                "{message}"
            );
            assert!(!message.contains(value), "the value is repeated: {message}");
        }
    }
    let message = error(&aws(
        BEDROCK,
        &format!("access_key_id = \"{pasted}\", secret_access_key = \"key\""),
    ));
    assert!(message.starts_with("t.toml:6:31: access_key_id is not an AWS access key id"));
    assert!(!message.contains(pasted), "{message}");
}

#[test]
fn signing_excludes_basic_auth_and_the_headers_the_signature_sets() {
    let both = format!(
        "{SECRETS}[[integration]]\nname = \"aws\"\nhosts = [{BEDROCK}]\nbasic_auth = {{ username = \"u\", password = \"p\" }}\naws_sigv4 = {{ {KEYS} }}\n"
    );
    assert_eq!(
        error(&both),
        "t.toml:7:13: integration \"aws\" has basic_auth and aws_sigv4, which both set Authorization; keep one"
    );
    for header in [
        "Authorization",
        "X-Amz-Date",
        "x-amz-security-token",
        "X-Amz-Content-Sha256",
    ] {
        let text = format!(
            "{SECRETS}[[integration]]\nname = \"aws\"\nhosts = [{BEDROCK}]\nheaders = {{ {header} = \"x\" }}\naws_sigv4 = {{ {KEYS} }}\n"
        );
        assert_eq!(
            error(&text),
            format!("t.toml:6:13: integration \"aws\" sets header \"{header}\", which its aws_sigv4 signature sets; remove it")
        );
    }
    let api_key = format!(
        "{SECRETS}[[integration]]\nname = \"aws\"\nhosts = [{BEDROCK}]\nheaders = {{ x-api-key = \"${{secret:key}}\" }}\naws_sigv4 = {{ {KEYS} }}\n"
    );
    assert_eq!(parse(&api_key).integrations[0].headers.len(), 1);
}

#[test]
fn hosts_that_may_name_sts_are_refused() {
    for host in [
        "sts.amazonaws.com",
        "sts.us-east-1.amazonaws.com",
        "STS.eu-west-1.amazonaws.com.",
        "sts-fips.us-east-1.amazonaws.com",
        "sts.cn-north-1.amazonaws.com.cn",
        "sts.us-east-1.api.aws",
        "vpce-0123-abcd.sts.us-east-1.vpce.amazonaws.com",
        "*.amazonaws.com",
        "*.amazonaws.com.cn",
        "*.api.aws",
        "*.us-east-1.amazonaws.com",
        "*.sts.us-east-1.amazonaws.com",
        "*.us-east-1.vpce.amazonaws.com",
    ] {
        let message = error(&aws(
            &format!("\"s3.us-east-1.amazonaws.com\", \"{host}\""),
            KEYS,
        ));
        assert!(
            message.starts_with("t.toml:5:9: host \"")
                && message.contains("may name an AWS STS endpoint"),
            "{host}: {message}"
        );
    }
    for host in [
        "s3.amazonaws.com",
        "*.s3.amazonaws.com",
        "*.s3.us-west-2.amazonaws.com",
        "*.s3-us-west-2.amazonaws.com",
        "sts.s3.us-west-2.amazonaws.com",
        "*.execute-api.us-east-1.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "sts.example.com",
        "*.example.com",
    ] {
        parse(&aws(&format!("\"{host}\""), KEYS));
    }
}

#[test]
fn scope_names_are_what_a_credential_scope_holds() {
    for name in ["us-east-1", "s3", "bedrock", "execute-api", "cn-north-1"] {
        assert!(is_aws_scope_name(name), "{name}");
    }
    let long = "a".repeat(65);
    for name in [
        "",
        "US-east-1",
        "us east",
        "s3/x",
        "a,b",
        "é",
        long.as_str(),
    ] {
        assert!(!is_aws_scope_name(name), "{name}");
    }
}

#[test]
fn a_secret_field_may_name_a_minted_secret_which_the_integration_then_reads_as_minted() {
    let text = format!(
        "[secrets.crm.oauth2]\ntoken_url = \"https://login.example/t\"\nclient_id = \"c\"\n\n\
         [[integration]]\nname = \"aws\"\nhosts = [{BEDROCK}]\n\
         aws_sigv4 = {{ access_key_id = \"AKIDEXAMPLE\", secret_access_key = \"crm\" }}\n"
    );
    let config = parse(&text);
    assert_eq!(config.integrations[0].minted, vec!["crm".to_string()]);
}

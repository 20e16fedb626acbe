use super::*;
use crate::config::tests::integration;

#[test]
fn templates() {
    let secrets = Secrets::of(&[("k", "V"), ("other-1", "W")]);
    let render = |s: &str| Template::parse(s).unwrap().render(&secrets).unwrap();
    assert_eq!(render("Bearer ${secret:k}"), "Bearer V");
    assert_eq!(render("${secret:k}:${secret:other-1}"), "V:W");
    assert_eq!(render("$$${secret:k}$$"), "$V$");
    assert_eq!(render("pa$word $"), "pa$word $");
    assert_eq!(render("$${secret:k}"), "${secret:k}");
    assert_eq!(render(""), "");
    let template = Template::parse("${secret:k} ${secret:x} ${secret:k}").unwrap();
    assert_eq!(template.secret_names().collect::<Vec<_>>(), ["k", "x", "k"]);
    assert_eq!(
        template.render(&secrets).unwrap_err().to_string(),
        "secret \"x\" has no loaded value"
    );
}

#[test]
fn template_errors() {
    let header = |value: &str| {
        integration(&format!(
            "name = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = {value} }}\n"
        ))
    };
    assert_eq!(
        header("\"Bearer ${secret:key\""),
        "t.toml:6:17: unclosed \"${\" in template; write \"$$\" for a literal \"$\""
    );
    assert_eq!(
        header("\"${env:HOME}\""),
        "t.toml:6:17: unknown placeholder \"${env:HOME}\"; the only one is \"${secret:NAME}\" (write \"$$\" for a literal \"$\")"
    );
    assert_eq!(
        header("\"${secret:}\""),
        "t.toml:6:17: secret name is empty"
    );
    assert_eq!(
        header("\"Bearer ${secret:nope}\""),
        "t.toml:6:17: secret \"nope\" is not defined in [secrets]"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { username = \"u\", password = \"${secret:x}\" }\n"),
        "t.toml:6:43: secret \"x\" is not defined in [secrets]"
    );
}

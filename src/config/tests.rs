use super::check::check_text;
use super::*;

const GOOD: &str = r#"
        [github]
        webhook_secret = "env:GH"
        [apps.hello]
        package = "Hello_App"
        repo = "Acme/Hello"
        install = "{dir}/venv/bin/pip install -U {package}=={version}"
        restart = "kill -HUP $(cat {dir}/pid)"
        health = "curl -fsS localhost:{port}/version"
        [apps.hello.environments.production]
        nodes = [{ name = "node1", dir = "n1", vars = { port = "8001" } }]
        chat_deployers = ["U2CERLKJA", "W0ABCDEF1"]
    "#;

#[test]
fn good_config_gets_defaults() {
    let c = Config::parse(GOOD, Path::new("/etc/shipit/shipit.toml")).unwrap();
    let app = c.app("hello").unwrap();
    assert_eq!(app.package.to_string(), "hello-app");
    assert_eq!(app.repo.as_deref(), Some("acme/hello"));
    assert_eq!(app.tag_pattern.to_string(), "v{version}");
    assert_eq!(app.default_env, "production");
    assert_eq!(app.auto_deploy, vec!["production".to_string()]);
    assert!(app.rollout.canary && app.rollout.auto_rollback);
    assert_eq!(c.server.state, Path::new("/etc/shipit/shipit.db"));
    assert_eq!(c.apps_for_repo("ACME/hello").count(), 1);
    let env = &app.environments["production"];
    assert!(env.chat_forcers.is_empty(), "nobody may force unless named");
    assert_eq!(env.chat_lockers, env.chat_deployers);
    assert_eq!(c.slack_workspace, SlackWorkspace::default());
}

#[test]
fn chat_identities_are_user_ids_and_the_workspace_is_pinned_by_its_ids() {
    let text = |slack: &str, deployers: &str| {
        format!(
            r#"
            [slack]
            signing_secret = "env:SLACK"
            {slack}
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
            chat_deployers = [{deployers}]
            chat_forcers = ["U2CERLKJA"]
            chat_lockers = ["*"]
        "#
        )
    };
    let c = Config::parse(
        &text(r#"team_id = "T1DC2JH3J""#, r#""U2CERLKJA""#),
        Path::new("s.toml"),
    )
    .unwrap();
    assert_eq!(c.slack_workspace.team_id.as_deref(), Some("T1DC2JH3J"));
    let env = &c.apps["hello"].environments["production"];
    assert_eq!(env.chat_forcers, ["U2CERLKJA"]);
    assert_eq!(env.chat_lockers, ["*"]);

    // A name is an error whose hint says how to find the id.
    let err = Config::parse(&text("", r#""@roadrunner""#), Path::new("s.toml")).unwrap_err();
    let p = err
        .problems
        .iter()
        .find(|p| p.key == "apps.hello.environments.production.chat_deployers[0]")
        .unwrap();
    assert!(p.message.contains("is a user name"), "{p:?}");
    assert!(p.hint.contains("Copy member ID"), "{p:?}");
    // No team_id: a warning, since every workspace the app is in could deploy.
    let (_, problems) = check_text(&text("", r#""U2CERLKJA""#), Path::new("s.toml"));
    assert!(problems
        .iter()
        .any(|p| p.key == "slack.team_id" && p.severity == Severity::Warning));
    let err = Config::parse(
        &text(r#"team_id = "acme""#, r#""U2CERLKJA""#),
        Path::new("s.toml"),
    )
    .unwrap_err();
    assert!(err.problems.iter().any(|p| p.key == "slack.team_id"));
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let bad = r#"
            [slack]
            response_url_prefix = "https://hooks.slack.com"
            [apps.Hello]
            package = "hello app"
            repo = "nope"
            tag_pattern = "v{ver}"
            install = "pip install {package}=={versoin}"
            restart = "kill {"
            [apps.Hello.environments.prod]
            chat_deployers = ["roadrunner"]
        "#;
    let err = Config::parse(bad, Path::new("shipit.toml")).unwrap_err();
    let keys: Vec<&str> = err
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.key.as_str())
        .collect();
    for k in [
        "slack.response_url_prefix",
        "apps.Hello",
        "apps.Hello.package",
        "apps.Hello.repo",
        "apps.Hello.tag_pattern",
        "apps.Hello.install",
        "apps.Hello.restart",
        "apps.Hello.environments.prod",
        "apps.Hello.environments.prod.chat_deployers[0]",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(err.problems.iter().all(|p| !p.hint.is_empty()));
    let text = err.to_string();
    assert!(
        text.contains("shipit.toml: error: apps.Hello.install: unknown placeholder(s): versoin"),
        "{text}"
    );
}

/// An app on SSM nodes selected by `tags`, with `env` added to its environment.
fn ssm_app(tags: &str, env: &str) -> String {
    format!(
        r#"
            [apps.hello]
            package = "hello-app"
            install = "{{dir}}/venv/bin/pip install {{package}}=={{version}}"
            restart = "systemctl restart hello@{{port}}"
            health = "true"
            [apps.hello.environments.production]
            ssm_tags = {{ {tags} }}
            vars = {{ port = "8080" }}
            {env}
            "#
    )
}

#[test]
fn ssm_environments_name_their_directory_for_dir() {
    let text = |dir: &str| {
        ssm_app(
            r#""shipit:app" = "hello", "shipit:env" = "production""#,
            dir,
        )
    };
    let ok = Config::parse(&text("dir = \"/srv/hello\""), Path::new("x.toml")).unwrap();
    let env = &ok.app("hello").unwrap().environments["production"];
    assert!(matches!(&env.nodes, Nodes::Ssm { dir: Some(d), vars, .. }
            if d == "/srv/hello" && vars["port"] == "8080"));
    for (dir, wrong) in [
        (
            "",
            "apps.hello.install uses {dir} but this environment has no dir",
        ),
        (
            "dir = \"srv/hello\"",
            "\"srv/hello\" is not an absolute path",
        ),
    ] {
        let err = Config::parse(&text(dir), Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains(wrong), "{err}");
        assert_eq!(
            err.problems[0].key,
            "apps.hello.environments.production.dir"
        );
    }
    // A node check runs where the commands do: its {dir} needs one too.
    let check = "[[apps.hello.checks]]\nname = \"disk\"\ncheck = \"df {dir}\"\n";
    let without = text("").replace("{dir}/venv", "venv") + check;
    let err = Config::parse(&without, Path::new("x.toml")).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.key == "apps.hello.environments.production.dir"
                && p.message == "check disk uses {dir} but this environment has no dir"),
        "{err}"
    );
}

#[test]
fn ssm_tags_without_the_template_s_tag_keys_are_warned_about() {
    let text = |tags: &str| ssm_app(tags, "dir = \"/srv/hello\"");
    let warned = |tags: &str| -> Vec<String> {
        let (config, problems) = check_text(&text(tags), Path::new("x.toml"));
        assert!(config.is_some());
        problems
            .into_iter()
            .filter(|p| p.key == "apps.hello.environments.production.ssm_tags")
            .map(|p| {
                assert_eq!(p.severity, Severity::Warning);
                p.message
            })
            .collect()
    };
    assert!(warned(r#""shipit:app" = "hello", "shipit:env" = "production""#).is_empty());
    let w = warned(r#""shipit:app" = "hello", "role" = "web""#);
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("no shipit:env tag:"), "{}", w[0]);
    assert!(warned(r#"app = "hello""#)[0].starts_with("no shipit:app or shipit:env tag:"));
}

#[test]
fn syntax_errors_point_at_the_line() {
    let err = Config::parse("[apps.hello]\npackage = \n", Path::new("x.toml")).unwrap_err();
    assert_eq!(err.problems[0].key, "line 2, column 11");
}

#[test]
fn every_unknown_key_is_named_by_its_path_with_the_nearest_known_one() {
    let text = r#"
[server]
listn = "127.0.0.1:9000"

[apps.hello]
pakage = "hello-app"
package = "hello-app"
install = "true"
restart = "true"

[apps.hello.rollout]
bathces = [1, 2]
zzzzzz = 1

[apps.hello.environments.production]
nodes = [{ name = "n1", dir = "n1" }]
"#;
    let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
    let said: Vec<(&str, &str, &str)> = err
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.message.as_str(), p.hint.as_str()))
        .collect();
    assert_eq!(said.len(), 4, "{said:#?}");
    assert!(said.contains(&(
        "server.listn",
        "unknown key `listn`",
        "did you mean `listen`?"
    )));
    assert!(said.contains(&(
        "apps.hello.pakage",
        "unknown key `pakage`",
        "did you mean `package`?"
    )));
    assert!(said.contains(&(
        "apps.hello.rollout.bathces",
        "unknown key `bathces`",
        "did you mean `batches`?"
    )));
    let far = said
        .iter()
        .find(|p| p.0 == "apps.hello.rollout.zzzzzz")
        .unwrap();
    assert!(far.2.starts_with("known here: "), "{far:?}");
}

#[test]
fn tag_patterns() {
    let p = TagPattern::parse("hello-v{version}").unwrap();
    assert_eq!(p.extract("hello-v1.2"), Some("1.2"));
    assert_eq!(p.extract("v1.2"), None);
    assert!(TagPattern::parse("v").is_err());
    assert!(TagPattern::parse("{version}-{version}").is_err());
}

#[test]
fn a_server_reachable_from_elsewhere_without_an_api_token_is_warned_about() {
    let text = |server: &str| {
        format!(
            r#"
            [server]
            {server}
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
        "#
        )
    };
    let warned = |server: &str| {
        check_text(&text(server), Path::new("s.toml"))
            .1
            .iter()
            .any(|p| p.key == "server.api_token" && p.severity == Severity::Warning)
    };
    assert!(warned(r#"listen = "0.0.0.0:8080""#));
    assert!(!warned(r#"listen = "127.0.0.1:8080""#));
    assert!(!warned(
        "listen = \"0.0.0.0:8080\"\napi_token = \"env:TOKEN\""
    ));
}

/// The config, if there is one, and the keys of its errors.
fn error_keys(text: &str) -> (Option<Config>, Vec<String>) {
    let (config, problems) = check_text(text, Path::new("d.toml"));
    let errors = problems
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.key)
        .collect();
    (config, errors)
}

#[test]
fn every_duration_is_bounded_so_that_the_engine_cannot_overflow_on_it() {
    let errors = |table: &str, line: &str| {
        let text = format!(
            r#"
            [apps.hello]
            package = "hello-app"
            repo = "acme/hello"
            install = "true"
            restart = "true"
            [apps.hello.{table}]
            {line}
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
        "#
        );
        error_keys(&text).1
    };
    for (table, key, max) in [
        ("rollout", "bake_seconds", 86_400),
        ("rollout", "health_timeout_seconds", 86_400),
        ("rollout", "health_interval_seconds", 86_400),
        ("rollout", "lock_wait_seconds", 86_400),
        ("rollout", "command_timeout_seconds", 172_800),
        ("gate", "wait_seconds", 86_400),
    ] {
        let full = format!("apps.hello.{table}.{key}");
        assert_eq!(
            errors(table, &format!("{key} = {max}")),
            Vec::<String>::new()
        );
        for too_many in [max + 1, i64::MAX as u64] {
            assert_eq!(
                errors(table, &format!("{key} = {too_many}")),
                [full.as_str()]
            );
        }
    }
    assert_eq!(
        errors("rollout", "command_timeout_seconds = 0"),
        ["apps.hello.rollout.command_timeout_seconds"]
    );
    assert_eq!(
        errors("rollout", r#"batches = [1, "20%"]"#),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("rollout", "batches = [1, 0]"),
        ["apps.hello.rollout.batches[1]"]
    );
    assert_eq!(
        errors("rollout", r#"max_failed = "120%""#),
        ["line 8, column 26"]
    );
}

#[test]
fn drain_hooks_are_templates_with_their_own_timeouts_counted_in_the_restart_s() {
    let config = |hooks: &str, rollout: &str| {
        format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            {hooks}
            [apps.hello.rollout]
            command_timeout_seconds = 10
            health_timeout_seconds = 5
            {rollout}
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
        "#
        )
    };
    let (c, errors) = error_keys(&config("", ""));
    assert!(errors.is_empty(), "{errors:?}");
    let restart = |c: Option<Config>| {
        c.unwrap().apps["hello"]
            .rollout
            .command_seconds(crate::deploy::command::CommandKind::Restart)
    };
    assert_eq!(restart(c), 15, "no hooks: no time for them");
    let (c, errors) = error_keys(&config(
        r#"pre_restart = "lb out {node}"
            post_restart = "lb in {node}""#,
        "post_restart_timeout_seconds = 7",
    ));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        restart(c),
        15 + 60 + 7 + 2 * 5,
        "60 s unless given, and 5 s to die"
    );
    for (hooks, rollout, key) in [
        (
            "",
            "pre_restart_timeout_seconds = 5",
            "apps.hello.rollout.pre_restart_timeout_seconds",
        ),
        (
            r#"post_restart = "true""#,
            "post_restart_timeout_seconds = 0",
            "apps.hello.rollout.post_restart_timeout_seconds",
        ),
        (
            r#"pre_restart = "lb out {nowhere}""#,
            "",
            "apps.hello.pre_restart",
        ),
        // Each within bounds, but past SSM's 48 h together.
        (
            r#"pre_restart = "true""#,
            "pre_restart_timeout_seconds = 172800",
            "apps.hello.rollout",
        ),
    ] {
        assert_eq!(error_keys(&config(hooks, rollout)).1, [key]);
    }
    // Past any sum: refused, without overflowing on the way.
    let huge = config(
        r#"pre_restart = "true""#,
        "pre_restart_timeout_seconds = 18446744073709551615",
    );
    assert_eq!(
        error_keys(&huge).1,
        [
            "apps.hello.rollout.pre_restart_timeout_seconds",
            "apps.hello.rollout"
        ]
    );
}

#[test]
fn a_hook_using_dir_needs_it_even_beside_a_broken_hook() {
    let text = r#"
        [apps.hello]
        package = "hello-app"
        install = "pip install {package}=={version}"
        restart = "true"
        health = "true"
        pre_restart = "{dir}/bin/lb out"
        post_restart = "lb in {nowhere}"
        [apps.hello.environments.production]
        ssm_tags = { "shipit:app" = "hello" }
    "#;
    assert_eq!(
        error_keys(text).1,
        [
            "apps.hello.post_restart",
            "apps.hello.environments.production.dir"
        ]
    );
}

/// App hello with one environment, production, on one listed node, and `lines` more
/// keys of that environment.
fn production_with(lines: &str) -> String {
    format!(
        r#"
        [apps.hello]
        package = "hello-app"
        install = "true"
        restart = "true"
        health = "true"
        [apps.hello.environments.production]
        nodes = [{{ name = "n1", dir = "n1" }}]
        {lines}
    "#
    )
}

#[test]
fn calendars_are_checked_key_by_key() {
    let config = production_with;
    let ok = r#"time_zone = "Europe/Berlin"
            windows = ["Mon-Thu 09:00-16:00"]
            freezes = [{ yearly = "12-20..01-03", reason = "holidays" }]
            freeze_overriders = ["U2CERLKJA", "ann"]"#;
    let (c, errors) = error_keys(&config(ok));
    assert!(errors.is_empty(), "{errors:?}");
    let env = &c.unwrap().apps["hello"].environments["production"];
    assert!(env.calendar.as_ref().unwrap().summary.contains("holidays"));
    assert_eq!(env.freeze_overriders, ["U2CERLKJA", "ann"]);
    let e = "apps.hello.environments.production";
    for (lines, keys) in [
        (
            r#"windows = ["Mon-Thu 09:00-16:00"]"#.to_string(),
            vec![format!("{e}.time_zone")],
        ),
        // Frozen all year: nothing would ever deploy.
        (
            r#"time_zone = "UTC"
            freezes = [{ yearly = "01-01..12-31", reason = "never" }]"#
                .to_string(),
            vec![format!("{e}.freezes")],
        ),
        (
            r#"time_zone = "Berlin"
            windows = ["Mon 9-5"]
            freezes = [{ monthly = "third Saturday", reason = "" }]
            freeze_overriders = ["@ann"]"#
                .to_string(),
            vec![
                format!("{e}.time_zone"),
                format!("{e}.windows[0]"),
                format!("{e}.freezes[0].reason"),
                format!("{e}.freeze_overriders[0]"),
            ],
        ),
    ] {
        assert_eq!(error_keys(&config(&lines)).1, keys, "{lines}");
    }
    // An unknown key in a freeze is named with its place.
    let (_, problems) = check_text(
        &config(
            r#"time_zone = "UTC"
            freezes = [{ from = "2026-12-24", until = "2026-12-26", reason = "x", why = "y" }]"#,
        ),
        Path::new("d.toml"),
    );
    assert!(
        problems
            .iter()
            .any(|p| p.key.contains("freezes") && p.message.contains("why")),
        "{problems:?}"
    );
}

#[test]
fn layouts_are_in_place_or_releases_keeping_at_least_two() {
    let check = |lines: &str| {
        let text = format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "{{venv}}/bin/pip install {{package}}=={{version}}"
            restart = "true"
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
            {lines}
        "#
        );
        let (config, errors) = error_keys(&text);
        (
            config.map(|c| c.apps["hello"].environments["production"].layout),
            errors,
        )
    };
    use super::layout::Layout;
    assert_eq!(check(""), (Some(Layout::InPlace), vec![]));
    assert_eq!(
        check("layout = \"releases\""),
        (Some(Layout::Releases { keep: 5 }), vec![])
    );
    assert_eq!(
        check("layout = \"releases\"\nkeep_releases = 2"),
        (Some(Layout::Releases { keep: 2 }), vec![])
    );
    let env = "apps.hello.environments.production";
    for (lines, key) in [
        ("layout = \"releases\"\nkeep_releases = 1", "keep_releases"),
        ("keep_releases = 3", "keep_releases"),
        ("layout = \"capistrano\"", "layout"),
    ] {
        assert_eq!(check(lines).1, [format!("{env}.{key}")], "{lines}");
    }
}

#[test]
fn an_index_is_an_http_url_polled_within_bounds_and_gives_index_to_templates() {
    let check = |index: &str, install: &str| {
        let text = format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "{install}"
            restart = "true"
            {index}
            [apps.hello.environments.production]
            nodes = [{{ name = "n1", dir = "n1" }}]
        "#
        );
        let (config, errors) = error_keys(&text);
        let index = config.and_then(|c| c.apps.get("hello").and_then(|a| a.index.clone()));
        (index, errors)
    };
    let pip = "venv/bin/pip install --index-url {index} {package}=={version}";
    let (index, errors) = check(r#"index = { url = "http://pypi.internal/simple" }"#, pip);
    assert_eq!(errors, Vec::<String>::new());
    let index = index.unwrap();
    assert_eq!(index.url, "http://pypi.internal/simple/");
    assert_eq!(index.poll_seconds, 30);
    for (line, key) in [
        (
            r#"index = { url = "ftp://x/simple/" }"#,
            "apps.hello.index.url",
        ),
        (
            r#"index = { url = "http://x/", poll_seconds = 0 }"#,
            "apps.hello.index.poll_seconds",
        ),
        (
            r#"index = { url = "http://x/", username = "ci" }"#,
            "apps.hello.index",
        ),
        ("", "apps.hello.install"),
    ] {
        assert_eq!(check(line, pip).1, [key], "{line}");
    }
}

#[test]
fn ssh_nodes_take_the_environment_s_defaults_and_keep_their_directory_as_written() {
    let check = |env: &str, nodes: &str| {
        let text = format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            [apps.hello.environments.production]
            {env}
            nodes = [{nodes}]
        "#
        );
        let (config, errors) = error_keys(&text);
        let nodes = config.map(
            |c| match &c.apps["hello"].environments["production"].nodes {
                Nodes::Listed(nodes) => nodes.clone(),
                Nodes::Ssm { .. } => panic!("listed nodes expected"),
            },
        );
        (nodes, errors)
    };
    let (nodes, errors) = check(
        r#"ssh = { user = "deploy", identity_file = "keys/id", known_hosts = "/etc/kh", connect_timeout_seconds = 3 }"#,
        r#"{ name = "web1", ssh = "10.0.0.5", dir = "/srv/hello" },
           { name = "web2", ssh = "ops@[::1]:2222", dir = "/srv/hello" },
           { name = "here", dir = "n1" }"#,
    );
    assert_eq!(errors, Vec::<String>::new());
    let nodes = nodes.unwrap();
    let web1 = nodes[0].ssh.as_ref().unwrap();
    assert_eq!(web1.to_string(), "deploy@10.0.0.5");
    assert_eq!(web1.identity_file.as_deref(), Some(Path::new("keys/id")));
    assert_eq!(web1.known_hosts.as_deref(), Some(Path::new("/etc/kh")));
    assert_eq!(web1.connect_timeout_seconds, 3);
    assert!(
        !web1.accept_new_host_keys,
        "no trust on first use unless asked"
    );
    assert_eq!(nodes[0].dir, Path::new("/srv/hello"));
    assert_eq!(nodes[1].ssh.as_ref().unwrap().to_string(), "ops@[::1]:2222");
    assert!(nodes[2].ssh.is_none());

    let env = "apps.hello.environments.production";
    for (ssh, nodes, key) in [
        (
            "",
            r#"{ name = "w", ssh = "-oProxyCommand=x", dir = "/srv" }"#,
            "nodes[0].ssh",
        ),
        (
            "",
            r#"{ name = "w", ssh = "web1:0", dir = "/srv" }"#,
            "nodes[0].ssh",
        ),
        (
            "",
            r#"{ name = "w", ssh = "web1", dir = "srv" }"#,
            "nodes[0].dir",
        ),
        (
            r#"ssh = { user = "-l" }"#,
            r#"{ name = "w", ssh = "web1", dir = "/srv" }"#,
            "ssh.user",
        ),
        (
            r#"ssh = { known_hosts = "~/.ssh/kh" }"#,
            r#"{ name = "w", ssh = "web1", dir = "/srv" }"#,
            "ssh.known_hosts",
        ),
        (
            r#"ssh = { identity_file = "a b" }"#,
            r#"{ name = "w", ssh = "web1", dir = "/srv" }"#,
            "ssh.identity_file",
        ),
        (
            r#"ssh = { connect_timeout_seconds = 0 }"#,
            r#"{ name = "w", ssh = "web1", dir = "/srv" }"#,
            "ssh.connect_timeout_seconds",
        ),
        (
            r#"ssh = { user = "deploy" }"#,
            r#"{ name = "w", dir = "n1" }"#,
            "ssh",
        ),
    ] {
        assert_eq!(
            check(ssh, nodes).1,
            [format!("{env}.{key}")],
            "{ssh} {nodes}"
        );
    }
    let (_, errors) = error_keys(&ssm_app(
        r#""shipit:app" = "hello", "shipit:env" = "production""#,
        "dir = \"/srv/hello\"\nssh = { user = \"deploy\" }",
    ));
    assert_eq!(errors, [format!("{env}.ssh")]);
}

#[test]
fn check_names_unset_secret_variables_and_node_directories_that_are_not_there() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("n1")).unwrap();
    let text = r#"
[github]
webhook_secret = "env:SHIPIT_TEST_SURELY_UNSET_SECRET"
[apps.hello]
package = "hello-app"
install = "true"
restart = "true"
[apps.hello.environments.production]
nodes = [{ name = "n1", dir = "n1" }, { name = "n2", dir = "n2" }]
"#;
    let path = dir.path().join("shipit.toml");
    std::fs::write(&path, text).unwrap();
    let report = super::check(&path);
    let errors: Vec<(&str, &str)> = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| (p.key.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        errors[0],
        (
            "github.webhook_secret",
            "environment variable SHIPIT_TEST_SURELY_UNSET_SECRET is not set here"
        )
    );
    assert_eq!(
        errors[1].0,
        "apps.hello.environments.production.nodes[1].dir"
    );
    assert!(errors[1].1.ends_with("n2 is not a directory"), "{errors:?}");
    // Loading is not refused for either: a function has only its own secrets' variables.
    assert!(Config::load(&path).is_ok());
}

#[test]
fn a_local_node_directory_is_absolute_whatever_the_config_path() {
    let text = r#"
[apps.hello]
package = "hello-app"
install = "true"
restart = "true"
[apps.hello.environments.production]
nodes = [{ name = "n1", dir = "nodes/n1" }]
"#;
    // A relative config path, as the default `shipit.toml` is: `{dir}` must still name the
    // node's directory from inside it, where its commands run.
    let config = Config::parse(text, Path::new("shipit.toml")).unwrap();
    let Nodes::Listed(nodes) = &config.apps["hello"].environments["production"].nodes else {
        panic!("listed nodes");
    };
    let want = std::env::current_dir().unwrap().join("nodes/n1");
    assert_eq!(nodes[0].dir, want);
}

#[test]
fn approvals_are_checked_key_by_key() {
    let config = |line: &str| production_with(&format!("approvals = {line}"));
    let (c, errors) = error_keys(&config(r#"{ approvers = ["U2CERLKJA", "ann"] }"#));
    assert!(errors.is_empty(), "{errors:?}");
    let env = &c.unwrap().apps["hello"].environments["production"];
    let rules = env.approvals.as_ref().unwrap();
    assert_eq!(
        (
            rules.required,
            rules.requester_may_approve,
            rules.grace_seconds,
            rules.timeout_seconds
        ),
        (1, false, 14_400, 86_400)
    );
    let e = "apps.hello.environments.production.approvals";
    for (line, keys) in [
        (
            r#"{ required = 2, approvers = ["U1", "U1"] }"#,
            vec![format!("{e}.approvers")],
        ),
        (
            r#"{ required = 0, approvers = ["U1"] }"#,
            vec![format!("{e}.required")],
        ),
        (
            r#"{ approvers = ["@ann", "U1"], timeout_seconds = 10, grace_seconds = 99999999 }"#,
            vec![
                format!("{e}.approvers[0]"),
                format!("{e}.timeout_seconds"),
                format!("{e}.grace_seconds"),
            ],
        ),
    ] {
        assert_eq!(error_keys(&config(line)).1, keys, "{line}");
    }
    // One approver for one approval: their own deploys could never be approved.
    let (_, problems) = check_text(&config(r#"{ approvers = ["U1"] }"#), Path::new("d.toml"));
    assert!(
        problems.iter().any(|p| p.severity == Severity::Warning
            && p.key == format!("{e}.approvers")
            && p.message.contains("can never be approved")),
        "{problems:?}"
    );
    // An unknown key is named with its place.
    let (_, problems) = check_text(
        &config(r#"{ approvers = ["U1", "U2"], whom = 1 }"#),
        Path::new("d.toml"),
    );
    assert!(
        problems
            .iter()
            .any(|p| p.key.contains("approvals") && p.message.contains("whom")),
        "{problems:?}"
    );
}

#[test]
fn promotions_name_another_environment_and_never_go_round() {
    let config = |staging: &str, production: &str| {
        format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            health = "true"
            default_env = "production"
            [apps.hello.environments.staging]
            nodes = [{{ name = "s1", dir = "s1" }}]
            {staging}
            [apps.hello.environments.production]
            nodes = [{{ name = "p1", dir = "p1" }}]
            {production}
        "#
        )
    };
    let (c, errors) = error_keys(&config(r#"promote = { to = "production" }"#, ""));
    assert!(errors.is_empty(), "{errors:?}");
    let env = &c.unwrap().apps["hello"].environments["staging"];
    let p = env.promote.as_ref().unwrap();
    assert_eq!((p.to.as_str(), p.after_seconds), ("production", 3600));
    let e = "apps.hello.environments";
    for (staging, production, keys) in [
        (
            r#"promote = { to = "prod" }"#,
            "",
            vec![format!("{e}.staging.promote.to")],
        ),
        (
            r#"promote = { to = "staging" }"#,
            "",
            vec![format!("{e}.staging.promote.to")],
        ),
        (
            r#"promote = { to = "production", after_seconds = 90000 }"#,
            "",
            vec![format!("{e}.staging.promote.after_seconds")],
        ),
        (
            r#"promote = { to = "production" }"#,
            r#"promote = { to = "staging" }"#,
            vec![
                format!("{e}.production.promote.to"),
                format!("{e}.staging.promote.to"),
            ],
        ),
    ] {
        assert_eq!(
            error_keys(&config(staging, production)).1,
            keys,
            "{staging} {production}"
        );
    }
}

/// A change calendar is an SSM document's name or ARN, on an ssm_tags environment only.
#[test]
fn a_change_calendar_is_an_ssm_document_on_an_ssm_environment() {
    let config = |nodes: &str, calendar: &str| {
        format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "true"
            restart = "true"
            health = "true"
            [apps.hello.environments.production]
            {nodes}
            change_calendar = "{calendar}"
        "#
        )
    };
    let ssm = r#"ssm_tags = { "shipit:app" = "hello" }"#;
    let arn = "arn:aws:ssm:eu-west-1:123456789012:document/prod-changes";
    for name in ["prod-changes", arn] {
        let (c, errors) = error_keys(&config(ssm, name));
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let env = &c.unwrap().apps["hello"].environments["production"];
        assert_eq!(env.change_calendar.as_deref(), Some(name));
    }
    let key = vec!["apps.hello.environments.production.change_calendar".to_string()];
    for (nodes, name) in [
        (r#"nodes = [{ name = "n1", dir = "n1" }]"#, "prod-changes"),
        (ssm, "no"),
        (ssm, "prod changes"),
        (ssm, "document/prod-changes"),
        (ssm, "arn::document/prod-changes"),
        (ssm, "arn:aws:ssm:eu-west-1:12345:document/prod-changes"),
        (
            ssm,
            "arn:aws:s3:eu-west-1:123456789012:document/prod-changes",
        ),
    ] {
        assert_eq!(error_keys(&config(nodes, name)).1, key, "{nodes} {name}");
    }
}

/// What status and the pages say a job waits for: its last step's words when it waits
/// to start (approval, a promotion's time), else what its calendar says; nothing of the
/// lock's holder.
#[test]
fn a_job_waits_for_what_its_last_step_said_else_for_its_calendar() {
    // Frozen from yesterday for 200 days: closed now, open within the check's horizon.
    let day = |d: i64| (chrono::Utc::now() + chrono::Duration::days(d)).format("%Y-%m-%d");
    let text = production_with(&format!(
        "time_zone = \"UTC\"\nfreezes = [{{ from = \"{}\", until = \"{}\", reason = \"long\" }}]",
        day(-1),
        day(200)
    ));
    let (c, errors) = error_keys(&text);
    assert!(errors.is_empty(), "{errors:?}");
    let env = &c.unwrap().apps["hello"].environments["production"];
    let job = crate::deploy::job::DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        crate::deploy::version::Version::parse("1.2.0").unwrap(),
        crate::deploy::job::Source::Upload {
            location: "u/hello_app-1.2.0-py3-none-any.whl".into(),
        },
        chrono::Utc::now(),
    );
    let now = chrono::Utc::now();
    let calendar = env.waiting_why(&job, None, None, now).unwrap();
    assert!(calendar.starts_with("frozen (long) until"), "{calendar}");
    let mut saved = crate::deploy::engine::Deploy::new(job.clone(), Default::default());
    saved.closed = Some("waits for approval (0 of 1): …".into());
    let said = env.waiting_why(&job, None, Some(&saved), now);
    assert_eq!(said.as_deref(), Some("waits for approval (0 of 1): …"));
    saved.locked = true;
    let said = env.waiting_why(&job, None, Some(&saved), now).unwrap();
    assert!(
        said.starts_with("frozen (long)"),
        "a job holding its lock waits for nothing it said"
    );
    assert_eq!(
        env.waiting_why(&job, Some(&job.id), Some(&saved), now),
        None
    );
}

#[test]
fn checks_are_the_app_s_with_the_environment_s_over_them_and_each_is_checked() {
    let text = format!(
        r#"{GOOD}
        [[apps.hello.checks]]
        name = "errors"
        prometheus = "http://prometheus:9090/"
        query = 'sum(rate(x{{version={{version}}}}[1m]))'
        condition = "< 0.01"
        [[apps.hello.checks]]
        name = "latency"
        prometheus = "https://prom.example"
        query = "histogram_quantile(0.99, x)"
        condition = "<= 0.3"
        token = "env:PROM"
        no_data = "pass"
        [[apps.hello.environments.production.checks]]
        name = "errors"
        prometheus = "http://prometheus:9090"
        query = "y"
        condition = "< 0.05"
        [[apps.hello.environments.production.checks]]
        name = "saturation"
        prometheus = "http://prometheus:9090"
        query = "z"
        condition = "< 0.9"
        [[apps.hello.environments.production.checks]]
        name = "monitors"
        datadog_tags = ["service:{{app}}"]
        app_key = "env:DD_APP"
        [apps.hello.notify.datadog]
        api_key = "env:DD_API"
        [[apps.hello.environments.production.checks]]
        name = "versus"
        analysis = "http://127.0.0.1:{{port}}/metrics"
        requests = "hello_requests_total"
        latency = "hello_request_seconds"
        [[apps.hello.environments.production.checks]]
        name = "alarms"
        cloudwatch_alarms = ["{{app}}-{{env}}-5xx", "elb-latency"]
        no_data = "pass"
        [[apps.hello.environments.production.checks]]
        name = "disk"
        check = "test $(df --output=pcent {{dir}} | tail -1 | tr -dc 0-9) -lt 90"
        "#
    );
    let c = Config::parse(&text, Path::new("x.toml")).unwrap();
    let job = crate::deploy::job::DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        crate::deploy::version::Version::parse("1.0.0").unwrap(),
        crate::deploy::job::Source::Cli {
            user: "ann".into(),
            nonce: "1".into(),
        },
        chrono::Utc::now(),
    );
    let checks = c.checks_for(&job);
    let shown: Vec<String> = checks
        .iter()
        .map(|check| {
            let rule = check.rule();
            let what = match &check.source {
                crate::config::CheckSource::Prometheus {
                    url,
                    query,
                    condition,
                    token,
                } => format!("{url} {query} {condition} {}", token.is_some()),
                crate::config::CheckSource::Datadog { monitors, tags, .. } => {
                    format!("datadog {monitors:?} {tags:?}")
                }
                crate::config::CheckSource::Node { command } => format!("node {command}"),
                crate::config::CheckSource::CloudWatch { alarms } => {
                    format!("cloudwatch {alarms:?}")
                }
                crate::config::CheckSource::Analysis {
                    metrics_url,
                    requests,
                    latency,
                    settings,
                } => format!(
                    "{} {requests} {latency:?} {} {}",
                    metrics_url
                        .render_url(|v| (v == "port").then_some("8001"))
                        .unwrap(),
                    settings.alpha(),
                    settings.min_requests
                ),
            };
            format!(
                "{} {what} {} per_version={}",
                check.name, check.no_data, rule.per_version
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "errors http://prometheus:9090 y < 0.05 false fail per_version=false",
            "latency https://prom.example histogram_quantile(0.99, x) <= 0.3 true pass per_version=false",
            "saturation http://prometheus:9090 z < 0.9 false fail per_version=false",
            "monitors datadog [] [\"service:{app}\"] fail per_version=false",
            "versus http://127.0.0.1:8001/metrics hello_requests_total Some(\"hello_request_seconds\") 0.01 200 fail per_version=true",
            "alarms cloudwatch [\"{app}-{env}-5xx\", \"elb-latency\"] pass per_version=false",
            "disk node test $(df --output=pcent {dir} | tail -1 | tr -dc 0-9) -lt 90 fail per_version=true",
        ]
    );

    let bad = format!(
        r#"{GOOD}
        [[apps.hello.checks]]
        name = "Errors"
        prometheus = "http://prometheus:9090"
        query = "x"
        condition = "0.01"
        no_data = "pause"
        [[apps.hello.checks]]
        name = "b"
        prometheus = "http://prometheus:9090"
        token = "env:PROM"
        [[apps.hello.checks]]
        name = "b"
        query = "x"
        condition = "< 1"
        [[apps.hello.checks]]
        name = "c"
        analysis = "ftp://{{port}}"
        requests = "2xx"
        alpha = 0.5
        [[apps.hello.checks]]
        name = "d"
        prometheus = "http://127.0.0.1:1@evil.example"
        token = "env:PROM"
        query = "x"
        condition = "< 1"
        [[apps.hello.checks]]
        name = "e"
        datadog_monitors = [1]
        datadog_tags = ["service:x"]
        [[apps.hello.checks]]
        name = "f"
        cloudwatch_alarms = []
        [[apps.hello.checks]]
        name = "g"
        cloudwatch_alarms = ["ok", "bad\u0007"]
        condition = "< 1"
        [[apps.hello.checks]]
        name = "h"
        check = "curl {{nowhere}}"
        [[apps.hello.checks]]
        name = "i"
        check = "true"
        query = "x"
        [apps.hello.rollout]
        check_interval_seconds = 0
        "#
    );
    let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
    let keys: Vec<&str> = err
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "apps.hello.rollout.check_interval_seconds",
            "apps.hello.checks[0].name",
            "apps.hello.checks[0].no_data",
            "apps.hello.checks[0].condition",
            // A token goes only to https (or this machine).
            "apps.hello.checks[1].prometheus",
            "apps.hello.checks[1].query",
            "apps.hello.checks[1].condition",
            "apps.hello.checks[2].name",
            "apps.hello.checks[2]",
            "apps.hello.checks[3].analysis",
            "apps.hello.checks[3].requests",
            "apps.hello.checks[3].alpha",
            "apps.hello.checks[4].prometheus",
            // By id or by tags, with an application key.
            "apps.hello.checks[5]",
            "apps.hello.checks[5].app_key",
            // 1 to 100 names DescribeAlarms takes, and nothing but alarms.
            "apps.hello.checks[6].cloudwatch_alarms",
            "apps.hello.checks[7]",
            "apps.hello.checks[7].cloudwatch_alarms",
            // Placeholders a node has, and nothing but the command.
            "apps.hello.checks[8].check",
            "apps.hello.checks[9]",
        ],
        "{err}"
    );
    // Through notify.datadog's API key and site.
    let without = format!(
        "{GOOD}\n[[apps.hello.checks]]\nname = \"m\"\ndatadog_monitors = [1]\napp_key = \"env:DD_APP\"\n"
    );
    let err = Config::parse(&without, Path::new("x.toml")).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.key == "apps.hello.checks" && p.message.contains("notify.datadog")),
        "{err}"
    );
}

#[test]
fn an_analysis_on_ssm_nodes_is_taken_with_a_warning_and_a_check_reads_one_kind() {
    let base = ssm_app(
        r#""shipit:app" = "hello", "shipit:env" = "production""#,
        "dir = \"/srv/hello\"",
    );
    let versus = "[[apps.hello.checks]]\nname = \"versus\"\nanalysis = \"http://{node_host}:{port}/metrics\"\nrequests = \"hello_requests_total\"\n";
    let (config, problems) = check_text(&format!("{base}{versus}"), Path::new("x.toml"));
    assert!(config.is_some(), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.severity == Severity::Warning
            && p.key == "apps.hello.environments.production"
            && p.message.contains("deploy-step must reach them")),
        "{problems:?}"
    );
    // Keys of another kind are named, whichever kind the check is.
    for (check, named) in [
        (
            "prometheus = \"http://p:9090\"\nquery = \"x\"\ncondition = \"< 1\"\nalpha = 0.1",
            "alpha",
        ),
        ("check = \"true\"\ntoken = \"env:T\"", "token"),
        (
            "cloudwatch_alarms = [\"a\"]\nrequests = \"r\"\nquery = \"q\"",
            "requests, query",
        ),
        (
            "analysis = \"http://{node_host}/m\"\nrequests = \"r\"\napp_key = \"env:K\"",
            "app_key",
        ),
    ] {
        let text = format!("{base}[[apps.hello.checks]]\nname = \"c\"\n{check}\n");
        let err = Config::parse(&text, Path::new("x.toml")).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.key == "apps.hello.checks[0]"
                && p.message.ends_with(&format!(": {named} (another kind's)"))),
            "{check}: {err}"
        );
    }
}

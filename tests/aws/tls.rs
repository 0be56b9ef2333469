//! The SDK's HTTPS client (rustls on ring, built by `aws::sdk_config`). The emulator
//! speaks plain HTTP, so here a TLS server on loopback, with a certificate from a CA made
//! for the test, answers Parameter Store: `shipit` must reach it when that CA is trusted
//! (`SSL_CERT_FILE`, read with the system's roots) and refuse it when not.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Answers every request with ParameterNotFound and logs which API was called, each line
/// as it is served; prints its port first.
const SERVER: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"__type":"ParameterNotFound","message":"answered over TLS"}'
        self.send_response(400)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with open(sys.argv[3], "a") as log:
            log.write(self.headers.get("x-amz-target", "") + "\n")
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .expect("openssl, to make the test's certificates");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

#[test]
fn the_sdk_reaches_aws_over_tls_it_trusts_and_refuses_a_certificate_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, "req -newkey rsa:2048 -nodes -x509 -days 1 -keyout ca.key -out ca.pem -subj /CN=shipit-test-ca");
    openssl(
        d,
        "req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj /CN=localhost",
    );
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(d, "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile leaf.ext -out leaf.pem");

    let log = d.join("served.log");
    let server = Command::new("python3")
        .args(["-c", SERVER, "leaf.pem", "key.pem"])
        .arg(&log)
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let endpoint = format!("https://localhost:{}", port.trim());

    let config = d.join("shipit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
state = "{}"
[github]
webhook_secret = "ssm:/shipit/github-webhook-secret"
[apps.hello]
package = "hello-app"
install = "true"
restart = "true"
[apps.hello.environments.production]
ssm_tags = {{ "shipit:app" = "hello", "shipit:env" = "production" }}
"#,
            d.join("state.db").display()
        ),
    )
    .unwrap();
    let event = concat!(env!("CARGO_MANIFEST_DIR"), "/events/github-tag-push.json");
    let ingest = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shipit"));
        cmd.arg("--config")
            .arg(&config)
            .args(["ingest", event])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_ENDPOINT_URL_SSM")
            .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    let served = || std::fs::read_to_string(&log).unwrap_or_default();

    let untrusted = ingest(None);
    assert!(
        untrusted.contains("UnknownIssuer") && !untrusted.contains("answered over TLS"),
        "{untrusted}"
    );
    assert_eq!(
        served(),
        "",
        "no request gets through a handshake it refused"
    );

    let trusted = ingest(Some(&d.join("ca.pem")));
    assert!(trusted.contains("answered over TLS"), "{trusted}");
    assert_eq!(served(), "AmazonSSM.GetParameter\n");
}

/// The TLS server, stopped however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

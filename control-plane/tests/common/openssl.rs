//! The real `openssl` binary in a scratch directory: what the control plane issues must be
//! accepted by a verifier we did not write, and plug-in CAs are made the way operators make them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustls_pki_types::CertificateDer;
use tempfile::TempDir;
use trellis_ca::der_to_pem;

/// A scratch directory in which `openssl` runs with relative file names.
pub struct Workdir {
    /// Removed with everything in it when the test ends.
    dir: TempDir,
}

impl Workdir {
    /// A new empty directory.
    pub fn new() -> Self {
        Self {
            dir: TempDir::new().expect("create a temporary directory"),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), contents).expect("write a file in the scratch directory");
    }

    /// Reads a text file.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a file in the scratch directory")
    }

    /// Writes DER certificates as one PEM file.
    pub fn write_certs(&self, name: &str, certs: &[CertificateDer<'_>]) {
        let pem: String = certs.iter().map(der_to_pem).collect();
        self.write(name, pem);
    }

    /// Runs `openssl args...` here, whatever its exit status.
    pub fn try_openssl(&self, args: &[&str]) -> Output {
        Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl binary must be installed to run these tests")
    }

    /// Runs `openssl args...` here; fails the test if it fails; returns stdout.
    pub fn openssl(&self, args: &[&str]) -> String {
        let out = self.try_openssl(args);
        assert!(
            out.status.success(),
            "openssl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("openssl prints UTF-8")
    }

    /// Runs `openssl args...`, expecting it to fail; returns stdout and stderr together.
    pub fn openssl_fails(&self, args: &[&str]) -> String {
        let out = self.try_openssl(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "openssl {} succeeded but should have failed:\n{text}",
            args.join(" ")
        );
        text
    }

    /// A new ECDSA P-256 PKCS#8 key in `name`.
    pub fn p256_key(&self, name: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ]);
    }

    /// A PEM CSR `csr` for `key` with `subject` and, if given, the `subjectAltName` value
    /// `san` (openssl syntax, e.g. `URI:spiffe://...`).
    pub fn csr(&self, key: &str, csr: &str, subject: &str, san: Option<&str>) -> String {
        let ext = san.map(|san| format!("subjectAltName={san}"));
        let mut args = vec!["req", "-new", "-key", key, "-subj", subject, "-out", csr];
        if let Some(ext) = &ext {
            args.extend_from_slice(&["-addext", ext]);
        }
        self.openssl(&args);
        self.read(csr)
    }

    /// `openssl x509 -noout -text` of the first certificate in `name`.
    pub fn x509_text(&self, name: &str) -> String {
        self.openssl(&["x509", "-noout", "-text", "-in", name])
    }

    /// Signs `<name>.csr` with `<issuer>-cert.pem`/`<issuer>-key.pem` (or self-signs with
    /// `<name>-key.pem`), adding exactly `extensions` (openssl config lines). Writes
    /// `<name>-cert.pem`.
    pub fn sign(&self, name: &str, issuer: Option<&str>, extensions: &str) {
        let ext_file = format!("{name}.ext");
        self.write(&ext_file, format!("[ext]\n{extensions}\n"));
        let (csr, out) = (format!("{name}.csr"), format!("{name}-cert.pem"));
        let mut args = vec![
            "x509".to_owned(),
            "-req".into(),
            "-in".into(),
            csr,
            "-out".into(),
            out,
            "-days".into(),
            "365".into(),
            "-sha256".into(),
            "-extfile".into(),
            ext_file,
            "-extensions".into(),
            "ext".into(),
        ];
        match issuer {
            Some(issuer) => args.extend([
                "-CA".into(),
                format!("{issuer}-cert.pem"),
                "-CAkey".into(),
                format!("{issuer}-key.pem"),
                "-CAcreateserial".into(),
            ]),
            None => args.extend(["-key".into(), format!("{name}-key.pem")]),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.openssl(&args);
    }

    /// Istio's `cacerts` layout made by openssl, ECDSA P-256: a root (`root-cert.pem`,
    /// `root-key.pem`), an intermediate signed by it (`ca-cert.pem`, `ca-key.pem` mode 0600),
    /// `cert-chain.pem` (intermediate then root).
    pub fn make_cacerts(&self) {
        const ROOT_EXT: &str = "basicConstraints=critical,CA:TRUE\n\
             keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash";
        const INTERMEDIATE_EXT: &str = "basicConstraints=critical,CA:TRUE,pathlen:0\n\
             keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n\
             subjectAltName=URI:spiffe://cluster.local";
        self.p256_key("root-key.pem");
        self.csr(
            "root-key.pem",
            "root.csr",
            "/O=Plug-in/CN=Plug-in Root CA",
            None,
        );
        self.sign("root", None, ROOT_EXT);
        self.p256_key("ca-key.pem");
        self.csr(
            "ca-key.pem",
            "ca.csr",
            "/O=Plug-in/CN=Plug-in Intermediate CA",
            None,
        );
        self.sign("ca", Some("root"), INTERMEDIATE_EXT);
        self.write(
            "cert-chain.pem",
            self.read("ca-cert.pem") + &self.read("root-cert.pem"),
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.path("ca-key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod 600 ca-key.pem");
    }
}

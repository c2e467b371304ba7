//! A fresh PostgreSQL database per test.

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

/// A database created for one test. Its URL is all a service needs.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
}

async fn admin_url() -> anyhow::Result<String> {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_try_init(|| async {
        if let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") {
            return Ok(url);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-postgres");
        let out = tokio::process::Command::new("bash")
            .arg(script)
            .output()
            .await
            .context("running scripts/test-postgres")?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/test-postgres failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    })
    .await
    .cloned()
}

impl TestDatabase {
    /// Create an empty database with a unique name.
    pub async fn create() -> anyhow::Result<Self> {
        let admin = admin_url().await?;
        let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .context("connecting to the test cluster")?;
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        conn.close().await?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

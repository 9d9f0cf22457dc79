//! Operator commands run beside (or instead of) the server: create accounts
//! and issue one-time enrolment codes for their devices.

use rand::Rng;

use crate::config::{AccountCommand, CodeOptions, StorageConfig};
use crate::db::Db;
use crate::http::secret_hash;
use crate::now_ms;

/// Letters and digits that cannot be mistaken for one another when read aloud
/// or typed from paper.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A 16-character code shown in groups of four, e.g. `K7QD-2MXP-9RTA-HC4W`.
pub fn new_code() -> String {
    let mut rng = rand::thread_rng();
    let chars: Vec<char> = (0..16).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect();
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

/// Codes are compared without dashes, spaces or case.
pub fn normalize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

pub async fn run(storage: &StorageConfig, cmd: AccountCommand) -> anyhow::Result<()> {
    let db = Db::connect(storage).await?;
    let (accounts, options) = match cmd {
        AccountCommand::Create { name, count, code } => {
            let name = name.trim();
            anyhow::ensure!(!name.is_empty(), "the account needs a name");
            anyhow::ensure!(count >= 1, "--count must be at least 1");
            let mut ids = Vec::new();
            for i in 1..=count {
                let id = uuid::Uuid::new_v4().to_string();
                let display = if count == 1 { name.to_owned() } else { format!("{name}-{i}") };
                db.create_account(&id, &display, now_ms()).await?;
                ids.push(id);
            }
            (ids, code)
        }
        AccountCommand::Code { account, code } => {
            anyhow::ensure!(db.account_exists(&account).await?, "no account {account}");
            (vec![account], code)
        }
    };
    for account_id in accounts {
        let code = issue_code(&db, &account_id, &options).await?;
        if options.json {
            println!("{}", serde_json::json!({ "account_id": account_id, "code": code }));
        } else {
            println!("account: {account_id}\nenrolment code: {code}\n(valid for {} hours, once)", options.ttl_hours);
        }
    }
    db.close().await;
    Ok(())
}

async fn issue_code(db: &Db, account_id: &str, options: &CodeOptions) -> anyhow::Result<String> {
    let code = new_code();
    let expires_at = now_ms() + (options.ttl_hours as i64) * 3_600_000;
    db.create_code(&secret_hash(&normalize_code(&code)), account_id, expires_at).await?;
    Ok(code)
}

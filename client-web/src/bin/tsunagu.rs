//! `tsunagu`: the native command-line client (enrol, list, create, add
//! (with a role, an end date and history), patient, edit, delete, remove, roles, consent, calls, admit,
//! discharge, post (with attachments; urgent), read (marks it read),
//! receipts, ack, urgent, fetch, follow, devices, revoke).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tsunagu_client::{Client, PostStatus, ReceivedPost};
use tsunagu_client::core::HistoryFrom;
use tsunagu_protocol::envelope::{CareEvent, CareEventKind, Consent, ConsentMethod, Patient, TimelineInfo};
use tsunagu_protocol::policy::Role;

#[derive(Parser)]
#[command(name = "tsunagu", about = "Tsunagu end-to-end encrypted care timeline client")]
struct Cli {
    /// Where the device keys and state live (default ~/.tsunagu).
    #[arg(long, env = "TSUNAGU_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrol this device with an enrolment code from the operator.
    Enrol {
        #[arg(long)]
        server: String,
        #[arg(long)]
        code: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List accounts (id, name).
    Accounts,
    /// List this device's timelines (id, epoch, head seq, members).
    Timelines,
    /// Create a timeline and print its id.
    Create,
    /// Add (invite) every device of an account to a timeline, with a role:
    /// member (default; reader for family accounts), liaison or reader.
    #[command(alias = "invite")]
    Add {
        timeline: String,
        account_id: String,
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// End of access: `+14d`, `+12h`, `+30m` from now, or milliseconds
        /// since the Unix epoch. The server removes the person after it.
        #[arg(long, value_parser = parse_until)]
        until: Option<u64>,
        /// Hand the timeline's past over to them: `all`, `none` (default), or
        /// since a date, `YYYY-MM-DD` (Japan time) or `-14d` (the last days).
        #[arg(long, value_parser = parse_history, default_value = "none")]
        history: HistoryFrom,
    },
    /// Set the timeline's name and the patient it is about (encrypted: the
    /// server never sees them).
    Patient {
        timeline: String,
        /// The patient's name.
        name: String,
        #[arg(long, default_value = "")]
        kana: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        birth_date: Option<String>,
        /// The timeline's name (default: the patient's name and 様).
        #[arg(long)]
        title: Option<String>,
    },
    /// Replace the text of one of your posts (everyone sees it edited; the
    /// original stays available).
    Edit { timeline: String, seq: u64, text: String },
    /// Delete one of your posts (everyone sees it deleted).
    Delete { timeline: String, seq: u64 },
    /// Record the patient's consent to share the timeline beyond the
    /// owner's organisation (the owner only; needed before such invitations).
    Consent {
        timeline: String,
        /// Who gave it: the patient, or a proxy's name and relation.
        #[arg(long, default_value = "the patient")]
        given_by: String,
        /// written, verbal or proxy.
        #[arg(long, default_value = "written", value_parser = parse_method)]
        method: ConsentMethod,
        /// What it covers.
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Print the timeline's roles; with ACCOUNT and ROLE, change that
    /// person's role (owner: hands the timeline over) or end date (owner).
    Role {
        timeline: String,
        account_id: Option<String>,
        #[arg(value_parser = parse_role)]
        role: Option<Role>,
        #[arg(long, value_parser = parse_until)]
        until: Option<u64>,
    },
    /// Set the urgent-post call lists (comma-separated account ids) and the
    /// time before the second call is alerted (the owner only).
    Calls {
        timeline: String,
        #[arg(long, value_delimiter = ',')]
        first: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        second: Option<Vec<String>>,
        #[arg(long, value_name = "SECONDS")]
        escalate_after: Option<u32>,
    },
    /// Post "admitted to HOSPITAL" in the timeline.
    Admit {
        timeline: String,
        hospital: String,
        #[arg(long)]
        organisation: Option<String>,
    },
    /// A hospital's liaison: post "discharged from HOSPITAL" and remove the
    /// ward staff of the liaison's organisation (the liaison stays).
    Discharge {
        timeline: String,
        hospital: String,
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Remove every device of an account from a timeline.
    Remove { timeline: String, account_id: String },
    /// Post a text, with files attached (each encrypted with its own key).
    Post {
        timeline: String,
        text: String,
        #[arg(long)]
        reply_to: Option<u64>,
        /// A file to attach (photo, PDF, …); repeatable.
        #[arg(long = "attach", value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Ask for an acknowledgement (確認しました): the timeline's first call
        /// is alerted, and the second call if nobody of it acknowledges in time.
        #[arg(long)]
        urgent: bool,
        /// An account to mention (its clients flag the post); repeatable.
        #[arg(long = "mention", value_name = "ACCOUNT")]
        mention: Vec<String>,
    },
    /// Download, decrypt and check the attachments of post SEQ into DIR.
    Fetch {
        timeline: String,
        seq: u64,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Catch up and print a timeline, and mark it read (既読) for everyone
    /// to see (not with --no-mark).
    Read {
        timeline: String,
        #[arg(long)]
        no_mark: bool,
    },
    /// Who has read (and received) each post of a timeline.
    Receipts { timeline: String },
    /// Acknowledge (確認しました) the urgent post SEQ.
    Ack { timeline: String, seq: u64 },
    /// Urgent posts of this device's timelines: open ones and the last week's.
    Urgent,
    /// Print a timeline (or all), then live posts until Ctrl-C.
    Follow { timeline: Option<String> },
    /// List this account's devices (id, name, enrolled, revoked; `*` marks this one).
    Devices,
    /// Revoke a device of this account: it is disconnected at once, can no
    /// longer connect, and is removed from every timeline.
    Revoke { device_id: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    run(cli.cmd, dir).await
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".tsunagu"),
        None => PathBuf::from(".tsunagu"),
    }
}

async fn connected(dir: &std::path::Path) -> Result<Client> {
    let mut c = Client::open(dir).await.with_context(|| format!("opening state in {}", dir.display()))?;
    c.connect().await.context("connecting")?;
    Ok(c)
}

async fn run(cmd: Cmd, dir: PathBuf) -> Result<()> {
    match cmd {
        Cmd::Enrol { server, code, name } => {
            let c = Client::enrol(&server, &code, &name, &dir).await.context("enrolment")?;
            println!("enrolled device {} for {} ({})", c.device_id(), c.account_name(), c.account_id());
            let mut c = c;
            c.connect().await.context("connecting")?;
            c.disconnect().await;
        }
        Cmd::Accounts => {
            let mut c = connected(&dir).await?;
            for a in c.list_accounts().await? {
                println!("{}\t{}", a.account_id, a.name);
            }
            c.disconnect().await;
        }
        Cmd::Timelines => {
            let mut c = connected(&dir).await?;
            let names = account_names(&mut c).await?;
            for t in c.list_timelines().await? {
                let members: Vec<&str> =
                    t.member_account_ids.iter().map(|a| names.get(a).map(String::as_str).unwrap_or(a)).collect();
                println!("{}\tepoch {}\thead {}\t{}", t.timeline_id, t.epoch, t.head_seq, members.join(", "));
            }
            c.disconnect().await;
        }
        Cmd::Create => {
            let mut c = connected(&dir).await?;
            println!("{}", c.create_timeline().await?);
            c.disconnect().await;
        }
        Cmd::Add { timeline, account_id, role, until, history } => {
            let mut c = connected(&dir).await?;
            let seq = match (role, until) {
                (None, None) => c.add_person(&timeline, &account_id).await?,
                (role, until) => c.add_member(&timeline, &account_id, role.unwrap_or(Role::Member), until).await?,
            };
            println!("added at #{seq}");
            match c.hand_over_history(&timeline, seq, std::slice::from_ref(&account_id), history).await? {
                Some(r) => println!("history #{}..#{} handed over ({} messages) at #{}", r.from_seq, r.to_seq, r.items, r.seq),
                None if history != HistoryFrom::None => println!("no history to hand over"),
                None => {}
            }
            c.disconnect().await;
        }
        Cmd::Patient { timeline, name, kana, birth_date, title } => {
            let mut c = connected(&dir).await?;
            let title = title.unwrap_or_else(|| format!("{name} 様"));
            let info = TimelineInfo { title, patient: Some(Patient { name, kana, birth_date }) };
            let seq = c.set_timeline_info(&timeline, info).await?;
            println!("#{seq}");
            c.disconnect().await;
        }
        Cmd::Edit { timeline, seq, text } => {
            let mut c = connected(&dir).await?;
            let at = c.edit_post(&timeline, seq, &text).await?;
            println!("#{seq} edited at #{at}");
            c.disconnect().await;
        }
        Cmd::Delete { timeline, seq } => {
            let mut c = connected(&dir).await?;
            let at = c.delete_post(&timeline, seq).await?;
            println!("#{seq} deleted at #{at}");
            c.disconnect().await;
        }
        Cmd::Consent { timeline, given_by, method, scope, note } => {
            let mut c = connected(&dir).await?;
            let obtained_by = c.account_id().to_owned();
            let consent = Consent { obtained_by, given_by, method, obtained_at: now_ms(), scope, note };
            let seq = c.record_consent(&timeline, consent).await?;
            println!("consent recorded at #{seq}");
            c.disconnect().await;
        }
        Cmd::Role { timeline, account_id, role, until } => {
            let mut c = connected(&dir).await?;
            if let (Some(account), Some(role)) = (account_id, role) {
                let seq = c
                    .update_policy(&timeline, |p| {
                        if role == Role::Owner {
                            for m in p.members.iter_mut().filter(|m| m.role == Role::Owner) {
                                m.role = Role::Member;
                            }
                        }
                        if let Some(m) = p.members.iter_mut().find(|m| m.account_id == account) {
                            m.role = role;
                            if until.is_some() {
                                m.until = until;
                            }
                        }
                    })
                    .await?;
                println!("changed at #{seq}");
            }
            let names = account_names(&mut c).await?;
            let policy = c.policy(&timeline).context("this timeline has no roles (opened before timeline policies)")?;
            for m in &policy.members {
                let until = m.until.map(|u| format!("\tuntil {}", iso(u))).unwrap_or_default();
                println!("{}\t{}\t{}{until}", m.account_id, names.get(&m.account_id).map(String::as_str).unwrap_or("?"), m.role.as_str());
            }
            println!("consent: {}", policy.consent_seq.map(|s| format!("#{s}")).unwrap_or_else(|| "not recorded".into()));
            c.disconnect().await;
        }
        Cmd::Calls { timeline, first, second, escalate_after } => {
            let mut c = connected(&dir).await?;
            let seq = c
                .update_policy(&timeline, |p| {
                    if let Some(f) = &first {
                        p.first_call = f.clone();
                    }
                    if let Some(s) = &second {
                        p.second_call = s.clone();
                    }
                    if let Some(e) = escalate_after {
                        p.escalate_after_secs = e;
                    }
                })
                .await?;
            println!("call lists changed at #{seq}");
            c.disconnect().await;
        }
        Cmd::Admit { timeline, hospital, organisation } => {
            let mut c = connected(&dir).await?;
            let event = CareEvent { kind: CareEventKind::Admitted, hospital, organisation_id: organisation, at: now_ms(), note: String::new() };
            println!("posted at #{}", c.post_event(&timeline, event).await?);
            c.disconnect().await;
        }
        Cmd::Discharge { timeline, hospital, organisation } => {
            let mut c = connected(&dir).await?;
            let event = CareEvent { kind: CareEventKind::Discharged, hospital, organisation_id: organisation, at: now_ms(), note: String::new() };
            let (seq, removed) = c.discharge(&timeline, event).await?;
            match removed {
                Some(r) => println!("posted at #{seq}; ward staff removed at #{r}"),
                None => println!("posted at #{seq}; no ward staff to remove"),
            }
            c.disconnect().await;
        }
        Cmd::Remove { timeline, account_id } => {
            let mut c = connected(&dir).await?;
            let seq = c.remove_person(&timeline, &account_id).await?;
            println!("removed at #{seq}");
            c.disconnect().await;
        }
        Cmd::Post { timeline, text, reply_to, attach, urgent, mention } => {
            let mut c = connected(&dir).await?;
            let seq = if urgent || !mention.is_empty() {
                if !attach.is_empty() {
                    bail!("--urgent and --mention posts carry no attachments yet: post the files separately");
                }
                c.post_with(&timeline, &text, tsunagu_client::core::PostOptions { urgent, reply_to, mentions: mention, ..Default::default() }).await?
            } else if attach.is_empty() {
                let id = tsunagu_client::core::new_msg_id();
                c.post_reply(&timeline, &id, &text, reply_to).await?
            } else {
                let mut refs = Vec::new();
                for path in &attach {
                    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "attachment".into());
                    let r = c.upload_attachment(&bytes, mime_of(path), &name).await.with_context(|| format!("uploading {}", path.display()))?;
                    refs.push(r);
                }
                c.post_with_attachments(&timeline, &text, reply_to, refs).await?
            };
            println!("#{seq}");
            c.disconnect().await;
        }
        Cmd::Fetch { timeline, seq, out } => {
            let mut c = connected(&dir).await?;
            let post = c.posts(&timeline).into_iter().find(|p| p.seq == seq).and_then(|p| p.post);
            let Some(post) = post else { bail!("this device has no readable post #{seq} in {timeline}") };
            if post.attachments.is_empty() {
                bail!("post #{seq} has no attachments");
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for a in &post.attachments {
                let bytes = c.download_attachment(a).await.with_context(|| format!("fetching {}", a.name))?;
                let path = out.join(safe_name(&a.name));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .with_context(|| format!("creating {} (existing files are not overwritten)", path.display()))?;
                std::io::Write::write_all(&mut f, &bytes)?;
                println!("{}\t{}\t{} bytes", path.display(), a.mime, bytes.len());
            }
            c.disconnect().await;
        }
        Cmd::Read { timeline, no_mark } => {
            let mut c = connected(&dir).await?;
            if !c.timelines().contains(&timeline) && c.processed_seq(&timeline).is_none() {
                bail!("this device has no timeline {timeline}");
            }
            let names = device_names(&mut c).await?;
            let posts = c.posts(&timeline);
            for p in &posts {
                println!("{}", format_post(p, &names));
            }
            if let (Some(last), false) = (posts.last(), no_mark) {
                c.mark_read(&timeline, last.seq).await?;
            }
            warn(&mut c);
            c.disconnect().await;
        }
        Cmd::Receipts { timeline } => {
            let mut c = connected(&dir).await?;
            let names = account_names(&mut c).await?;
            let members = c.list_timelines().await?.into_iter().find(|t| t.timeline_id == timeline).map(|t| t.member_account_ids);
            let Some(members) = members else { bail!("this device has no timeline {timeline}") };
            c.fetch_receipts(&timeline).await?;
            let name = |a: &String| names.get(a).cloned().unwrap_or_else(|| a.clone());
            for p in c.posts(&timeline).iter().filter(|p| p.post.is_some()) {
                let others = members.iter().filter(|a| p.sender_account_id.as_ref() != Some(*a)).count();
                let read: Vec<String> = c
                    .read_by(&timeline, p.seq)
                    .into_iter()
                    .filter(|(a, _)| p.sender_account_id.as_ref() != Some(a))
                    .map(|(a, at)| format!("{} {}", name(&a), iso(at)))
                    .collect();
                let delivered: Vec<String> = c.delivered_to(&timeline, p.seq).iter().filter(|a| p.sender_account_id.as_ref() != Some(*a)).map(name).collect();
                println!("#{}\tread by {} of {others}: {}\treceived by {}: {}", p.seq, read.len(), read.join(", "), delivered.len(), delivered.join(", "));
            }
            c.disconnect().await;
        }
        Cmd::Ack { timeline, seq } => {
            let mut c = connected(&dir).await?;
            c.acknowledge(&timeline, seq).await.context("acknowledging")?;
            println!("acknowledged #{seq}");
            c.disconnect().await;
        }
        Cmd::Urgent => {
            let mut c = connected(&dir).await?;
            let names = account_names(&mut c).await?;
            let name = |a: &String| names.get(a).cloned().unwrap_or_else(|| a.clone());
            for u in c.list_urgent().await? {
                let acks: Vec<String> = u.acks.iter().map(|a| format!("{} {}", name(&a.account_id), iso(a.at))).collect();
                let state = match (u.acks.is_empty(), u.escalated_at) {
                    (_, Some(at)) => format!("second call alerted {}", iso(at)),
                    (true, None) => format!("open, second call at {}", iso(u.escalate_at)),
                    (false, None) => "acknowledged".into(),
                };
                let text = c.posts(&u.timeline_id).into_iter().find(|p| p.seq == u.seq).and_then(|p| p.shown_text().map(str::to_owned)).unwrap_or_default();
                println!("{}#{}\t{} {}\t{}\tacknowledged by: {}\t{}", prefix(&None, &u.timeline_id), u.seq, name(&u.sender_account_id), iso(u.created_at), state, acks.join(", "), text);
            }
            c.disconnect().await;
        }
        Cmd::Follow { timeline } => {
            let mut c = connected(&dir).await?;
            let names = device_names(&mut c).await?;
            let tls = match &timeline {
                Some(t) => vec![t.clone()],
                None => c.timelines(),
            };
            let mut seen: HashSet<(String, u64)> = HashSet::new();
            for t in &tls {
                for p in c.posts(t) {
                    seen.insert((t.clone(), p.seq));
                    println!("{}{}", prefix(&timeline, t), format_post(&p, &names));
                }
            }
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    r = c.next_post(Duration::from_secs(30)) => {
                        if let Some((t, p)) = r? {
                            if timeline.as_ref().is_some_and(|x| *x != t) || !seen.insert((t.clone(), p.seq)) {
                                continue;
                            }
                            println!("{}{}", prefix(&timeline, &t), format_post(&p, &names));
                        }
                        warn(&mut c);
                    }
                }
            }
            c.disconnect().await;
        }
        Cmd::Devices => {
            let mut c = connected(&dir).await?;
            for d in c.devices().await? {
                let revoked = d.revoked_at.map(|t| format!("revoked {}", iso(t))).unwrap_or_else(|| "active".into());
                let current = if d.current { " *" } else { "" };
                println!("{}\t{}\tenrolled {}\t{}{}", d.device_id, d.name, iso(d.created_at), revoked, current);
            }
            c.disconnect().await;
        }
        Cmd::Revoke { device_id } => {
            let mut c = connected(&dir).await?;
            let own = device_id == c.device_id();
            c.revoke_device(&device_id).await.context("revoking")?;
            println!("revoked {device_id}; its removal from every timeline is proposed");
            if !own {
                c.disconnect().await;
            }
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "owner" => Ok(Role::Owner),
        "member" => Ok(Role::Member),
        "liaison" => Ok(Role::Liaison),
        "reader" => Ok(Role::Reader),
        _ => Err("one of owner, member, liaison, reader".into()),
    }
}

fn parse_method(s: &str) -> Result<ConsentMethod, String> {
    match s {
        "written" => Ok(ConsentMethod::Written),
        "verbal" => Ok(ConsentMethod::Verbal),
        "proxy" => Ok(ConsentMethod::Proxy),
        _ => Err("one of written, verbal, proxy".into()),
    }
}

/// `+14d`, `+12h`, `+30m` from now, or milliseconds since the Unix epoch.
fn parse_until(s: &str) -> Result<u64, String> {
    let bad = || "`+14d`, `+12h`, `+30m` or milliseconds since the Unix epoch".to_string();
    match s.strip_prefix('+') {
        Some(rel) => {
            let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
            let n: u64 = n.parse().map_err(|_| bad())?;
            let ms = match unit {
                "d" => 86_400_000,
                "h" => 3_600_000,
                "m" => 60_000,
                _ => return Err(bad()),
            };
            Ok(now_ms() + n * ms)
        }
        None => s.parse().map_err(|_| bad()),
    }
}

/// `all`, `none`, `YYYY-MM-DD` (from midnight Japan time) or `-14d`.
fn parse_history(s: &str) -> Result<HistoryFrom, String> {
    let bad = || "`all`, `none`, a date `YYYY-MM-DD` or `-14d`".to_string();
    match s {
        "all" => return Ok(HistoryFrom::All),
        "none" => return Ok(HistoryFrom::None),
        _ => {}
    }
    let s = s.strip_prefix("since:").unwrap_or(s);
    if let Some(days) = s.strip_prefix('-').and_then(|d| d.strip_suffix('d')) {
        let days: u64 = days.parse().map_err(|_| bad())?;
        return Ok(HistoryFrom::Since(now_ms().saturating_sub(days * 86_400_000)));
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let (y, m, d): (i64, i64, i64) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let jst_midnight = days * 86_400_000 - 9 * 3_600_000;
    Ok(HistoryFrom::Since(jst_midnight.max(0) as u64))
}

fn prefix(filter: &Option<String>, t: &str) -> String {
    if filter.is_some() {
        String::new()
    } else {
        format!("[{}] ", &t[..t.len().min(8)])
    }
}

fn warn(c: &mut Client) {
    for w in c.take_warnings() {
        eprintln!("warning: {w}");
    }
    for r in c.take_restores() {
        eprintln!(
            "warning: timeline {}: the server was restored from a backup and lost its newest posts; {} of this device's are sent again, {} of others' are kept here until their authors' devices send them again",
            r.timeline_id, r.resent, r.kept
        );
    }
}

async fn account_names(c: &mut Client) -> Result<HashMap<String, String>> {
    Ok(c.list_accounts().await?.into_iter().map(|a| (a.account_id, a.name)).collect())
}

/// device id → account name.
async fn device_names(c: &mut Client) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for a in c.list_accounts().await? {
        for d in a.device_ids {
            m.insert(d, a.name.clone());
        }
    }
    Ok(m)
}

fn format_post(p: &ReceivedPost, names: &HashMap<String, String>) -> String {
    let who = names.get(&p.sender_device_id).cloned().unwrap_or_else(|| p.sender_device_id.clone());
    match (&p.status, &p.post) {
        (PostStatus::Ok, Some(post)) => {
            let reply = post.reply_to.map(|r| format!("(re #{r}) ")).unwrap_or_default();
            let text = match (&p.edited, p.deleted_at) {
                (_, Some(at)) => format!("[deleted {}]", iso(at)),
                (Some(e), None) => format!("{} [edited {}]", e.text, iso(e.edited_at)),
                (None, None) => post.text.clone(),
            };
            let mut line = format!("#{} {} {} {}{}", p.seq, who, iso(post.sent_at), reply, text);
            if !post.mentions.is_empty() {
                line.push_str(&format!(" [mentions {}]", post.mentions.join(", ")));
            }
            if let Some(by) = &p.handed_over_by {
                line.push_str(&format!(" [handed over by {by}]"));
            }
            for (i, a) in post.attachments.iter().enumerate() {
                line.push_str(&format!("\n    attachment {}: {} ({}, {} bytes)", i + 1, a.name, a.mime, a.size));
            }
            line
        }
        (PostStatus::Ok, None) => match &p.record {
            Some(tsunagu_protocol::Envelope::Consent(c)) => {
                format!("#{} {} [consent recorded: given by {}, {:?}, for {}]", p.seq, who, c.given_by, c.method, c.scope)
            }
            Some(tsunagu_protocol::Envelope::Event(e)) => {
                let what = if e.kind == CareEventKind::Admitted { "admitted to" } else { "discharged from" };
                format!("#{} {} [{} {} {}]", p.seq, who, iso(e.at), what, e.hospital)
            }
            Some(tsunagu_protocol::Envelope::Edit(e)) => format!("#{} {} [edited #{}]", p.seq, who, e.target_seq),
            Some(tsunagu_protocol::Envelope::Delete(d)) => format!("#{} {} [deleted #{}]", p.seq, who, d.target_seq),
            _ => format!("#{} {} - [record]", p.seq, who),
        },
        (PostStatus::Unsupported, _) => format!("#{} {} - [unsupported message]", p.seq, who),
        _ => format!("#{} {} - [undecryptable]", p.seq, who),
    }
}

/// A media type from a file's extension (the receiver shows or opens by it).
fn mime_of(path: &std::path::Path) -> &'static str {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// An attachment's name as a file name in the output directory: no
/// directories, no hidden files.
fn safe_name(name: &str) -> String {
    let base: String = name.rsplit(['/', '\\']).next().unwrap_or("").chars().filter(|c| !c.is_control()).collect();
    let base = base.trim_start_matches('.').trim();
    if base.is_empty() { "attachment".into() } else { base.into() }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mth = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mth <= 2 { 1 } else { 0 };
    format!("{y:04}-{mth:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn attachment_names_stay_in_the_output_directory() {
        assert_eq!(super::safe_name("../../etc/passwd"), "passwd");
        assert_eq!(super::safe_name("..\\x.png"), "x.png");
        assert_eq!(super::safe_name(".."), "attachment");
        assert_eq!(super::safe_name(".bashrc"), "bashrc");
    }
}

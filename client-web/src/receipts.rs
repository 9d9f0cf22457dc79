//! Read receipts (既読) and urgent posts on the client: who has read and
//! received each post, the urgent posts with their acknowledgements
//! (確認しました), and the alerts for this person. [`Receipts`] is the state
//! and its rules, without IO; the `impl Core` below are the workflows the
//! UI, the CLI and tests call (`mark_read`, `fetch_receipts`, `acknowledge`,
//! `list_urgent`, …). The server pushes `read_mark`, `urgent_ack` and
//! `urgent_alert` frames; the core hands them to [`Receipts::on_frame`].
//!
//! The state is kept in memory only: it is the server's to tell (a client
//! asks again with `fetch_receipts` / `list_urgent` after connecting).

use std::collections::{BTreeMap, HashMap};

use tsunagu_protocol::frames::{AlertLevel, DeliveredMark, ReadMark, UrgentAck, UrgentAlert, UrgentState};
use tsunagu_protocol::{ClientFrame, ServerFrame};

use crate::core::Core;
use crate::state::ReceivedPost;
use crate::transport::Transport;
use crate::ClientError;

/// Most alerts kept until [`Core::take_alerts`] (the oldest are dropped).
const MAX_ALERTS: usize = 1000;

/// Receipts and urgent posts as this device knows them.
#[derive(Debug, Default, Clone)]
pub struct Receipts {
    /// timeline → account → read marks `(seq, at)`, seq ascending.
    read: HashMap<String, BTreeMap<String, Vec<(u64, u64)>>>,
    /// timeline → account → delivered position.
    delivered: HashMap<String, BTreeMap<String, u64>>,
    /// timeline → the highest seq this device sent `read` for.
    sent_read: HashMap<String, u64>,
    urgent: BTreeMap<(String, u64), UrgentState>,
    alerts: Vec<UrgentAlert>,
}

impl Receipts {
    /// Take in a pushed frame; false if it is not a receipt or urgent frame.
    pub fn on_frame(&mut self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::ReadMark(m) => self.add_mark(m),
            ServerFrame::UrgentAck { timeline_id, seq, account_id, at } => {
                self.add_ack(timeline_id, *seq, UrgentAck { account_id: account_id.clone(), at: *at })
            }
            ServerFrame::UrgentAlert(a) => self.add_alert(a.clone()),
            _ => return false,
        }
        true
    }

    /// A person's read position advanced (marks never go back: a mark at or
    /// below the known position is ignored).
    pub fn add_mark(&mut self, m: &ReadMark) {
        let marks = self.read.entry(m.timeline_id.clone()).or_default().entry(m.account_id.clone()).or_default();
        if marks.last().is_none_or(|(seq, _)| m.seq > *seq) {
            marks.push((m.seq, m.at));
        }
    }

    /// The server's answer to `get_receipts` replaces what is known of the timeline.
    pub fn set_receipts(&mut self, timeline_id: &str, read: &[ReadMark], delivered: &[DeliveredMark]) {
        self.read.remove(timeline_id);
        let mut sorted: Vec<&ReadMark> = read.iter().collect();
        sorted.sort_by_key(|m| (m.account_id.clone(), m.seq));
        for m in sorted {
            self.add_mark(m);
        }
        self.delivered.insert(timeline_id.to_owned(), delivered.iter().map(|d| (d.account_id.clone(), d.seq)).collect());
    }

    /// Who has read post `seq`, and when: for each person the first mark at
    /// or above it.
    pub fn read_by(&self, timeline_id: &str, seq: u64) -> Vec<(String, u64)> {
        let Some(people) = self.read.get(timeline_id) else { return Vec::new() };
        people.iter().filter_map(|(account, marks)| marks.iter().find(|(s, _)| *s >= seq).map(|(_, at)| (account.clone(), *at))).collect()
    }

    /// A person's read position in a timeline.
    pub fn read_position(&self, timeline_id: &str, account_id: &str) -> Option<u64> {
        self.read.get(timeline_id)?.get(account_id)?.last().map(|(seq, _)| *seq)
    }

    /// Who has received post `seq` on at least one device (everyone who
    /// read it has received it).
    pub fn delivered_to(&self, timeline_id: &str, seq: u64) -> Vec<String> {
        let mut people: Vec<String> = self
            .delivered
            .get(timeline_id)
            .into_iter()
            .flatten()
            .filter(|(_, d)| **d >= seq)
            .map(|(a, _)| a.clone())
            .chain(self.read_by(timeline_id, seq).into_iter().map(|(a, _)| a))
            .collect();
        people.sort();
        people.dedup();
        people
    }

    /// Whether a `read` up to `seq` should go to the server (it moves this
    /// device's position); records it as sent.
    pub fn should_send_read(&mut self, timeline_id: &str, seq: u64) -> bool {
        let sent = self.sent_read.entry(timeline_id.to_owned()).or_insert(0);
        if seq <= *sent {
            return false;
        }
        *sent = seq;
        true
    }

    /// The server's list of urgent posts replaces the known ones.
    pub fn set_urgent(&mut self, items: &[UrgentState]) {
        self.urgent = items.iter().map(|u| ((u.timeline_id.clone(), u.seq), u.clone())).collect();
    }

    /// A post was recorded: an urgent one becomes known as urgent (its
    /// `escalate_at` is 0, unknown, until [`Core::list_urgent`]).
    pub fn on_post(&mut self, timeline_id: &str, post: &ReceivedPost) {
        if !post.post.as_ref().is_some_and(|p| p.urgent) {
            return;
        }
        self.urgent.entry((timeline_id.to_owned(), post.seq)).or_insert_with(|| UrgentState {
            timeline_id: timeline_id.to_owned(),
            seq: post.seq,
            sender_account_id: post.sender_account_id.clone().unwrap_or_default(),
            created_at: post.stored_at,
            escalate_at: 0,
            escalated_at: None,
            acks: Vec::new(),
        });
    }

    pub fn add_ack(&mut self, timeline_id: &str, seq: u64, ack: UrgentAck) {
        let Some(u) = self.urgent.get_mut(&(timeline_id.to_owned(), seq)) else { return };
        if !u.acks.iter().any(|a| a.account_id == ack.account_id) {
            u.acks.push(ack);
        }
    }

    /// An alert for this person: kept for [`Core::take_alerts`], and the
    /// post becomes known as urgent.
    pub fn add_alert(&mut self, alert: UrgentAlert) {
        let state = self.urgent.entry((alert.timeline_id.clone(), alert.seq)).or_insert_with(|| UrgentState {
            timeline_id: alert.timeline_id.clone(),
            seq: alert.seq,
            sender_account_id: alert.sender_account_id.clone(),
            created_at: alert.created_at,
            // Unknown until `list_urgent`.
            escalate_at: 0,
            escalated_at: None,
            acks: Vec::new(),
        });
        if alert.level == AlertLevel::SecondCall && state.escalated_at.is_none() {
            state.escalated_at = Some(state.escalate_at.max(alert.created_at));
        }
        if self.alerts.len() >= MAX_ALERTS {
            self.alerts.remove(0);
        }
        self.alerts.push(alert);
    }

    pub fn urgent_state(&self, timeline_id: &str, seq: u64) -> Option<&UrgentState> {
        self.urgent.get(&(timeline_id.to_owned(), seq))
    }

    /// Every known urgent post, oldest first by timeline and seq.
    pub fn urgent_posts(&self) -> Vec<UrgentState> {
        self.urgent.values().cloned().collect()
    }

    pub fn take_alerts(&mut self) -> Vec<UrgentAlert> {
        std::mem::take(&mut self.alerts)
    }
}

impl Core {
    /// This person has read `timeline_id` up to `up_to_seq` (it was shown on
    /// screen). Sent only when it moves this device's position; the server
    /// coalesces and tells every member (`read_mark`) within about a second.
    pub async fn mark_read<T: Transport>(&mut self, io: &mut T, timeline_id: &str, up_to_seq: u64) -> Result<(), ClientError> {
        if up_to_seq == 0 || !self.receipts.should_send_read(timeline_id, up_to_seq) {
            return Ok(());
        }
        self.send(io, &ClientFrame::Read { timeline_id: timeline_id.into(), seq: up_to_seq }).await
    }

    /// Ask the server who has read and received the timeline.
    pub async fn fetch_receipts<T: Transport>(&mut self, io: &mut T, timeline_id: &str) -> Result<(), ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::GetReceipts { rid, timeline_id: timeline_id.into() }).await? {
            ServerFrame::Receipts { timeline_id, read, delivered, .. } => {
                self.receipts.set_receipts(&timeline_id, &read, &delivered);
                Ok(())
            }
            other => Err(crate::core::unexpected(other)),
        }
    }

    /// Who has read post `seq` and when (ms since the Unix epoch, server time).
    pub fn read_by(&self, timeline_id: &str, seq: u64) -> Vec<(String, u64)> {
        self.receipts.read_by(timeline_id, seq)
    }

    /// Who has received post `seq` on at least one of their devices.
    pub fn delivered_to(&self, timeline_id: &str, seq: u64) -> Vec<String> {
        self.receipts.delivered_to(timeline_id, seq)
    }

    /// A person's read position, as last heard from the server.
    pub fn read_position(&self, timeline_id: &str, account_id: &str) -> Option<u64> {
        self.receipts.read_position(timeline_id, account_id)
    }

    /// Acknowledge (確認しました) the urgent post at `seq`.
    pub async fn acknowledge<T: Transport>(&mut self, io: &mut T, timeline_id: &str, seq: u64) -> Result<(), ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::Acknowledge { rid, timeline_id: timeline_id.into(), seq }).await? {
            ServerFrame::Acknowledged { .. } => {
                // The server's `urgent_ack` push carries its time; until then, ours.
                let ack = UrgentAck { account_id: self.account_id().to_owned(), at: io.now_ms() };
                self.receipts.add_ack(timeline_id, seq, ack);
                Ok(())
            }
            other => Err(crate::core::unexpected(other)),
        }
    }

    /// The urgent posts of this device's timelines that this person has not
    /// acknowledged or that are at most a week old (e.g. after being offline).
    pub async fn list_urgent<T: Transport>(&mut self, io: &mut T) -> Result<Vec<UrgentState>, ClientError> {
        let rid = self.rid();
        match self.request(io, ClientFrame::ListUrgent { rid }).await? {
            ServerFrame::Urgent { items, .. } => {
                self.receipts.set_urgent(&items);
                Ok(items)
            }
            other => Err(crate::core::unexpected(other)),
        }
    }

    /// An urgent post and who acknowledged it, if this device knows it as urgent.
    pub fn urgent_state(&self, timeline_id: &str, seq: u64) -> Option<UrgentState> {
        self.receipts.urgent_state(timeline_id, seq).cloned()
    }

    /// Every urgent post this device knows of.
    pub fn urgent_posts(&self) -> Vec<UrgentState> {
        self.receipts.urgent_posts()
    }

    /// The alerts received for this person since the last call.
    pub fn take_alerts(&mut self) -> Vec<UrgentAlert> {
        self.receipts.take_alerts()
    }

    /// Process incoming frames until `done` holds or `timeout_ms` passes
    /// (e.g. until a read mark or an alert has arrived); whether it holds.
    pub async fn process_until<T: Transport>(&mut self, io: &mut T, timeout_ms: u64, done: impl Fn(&Core) -> bool) -> Result<bool, ClientError> {
        let deadline = io.now_ms() + timeout_ms;
        loop {
            if done(self) {
                self.flush_acks(io).await?;
                return Ok(true);
            }
            let now = io.now_ms();
            if now >= deadline || !self.pump_one(io, deadline - now).await? {
                self.flush_acks(io).await?;
                return Ok(done(self));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(account: &str, seq: u64, at: u64) -> ReadMark {
        ReadMark { timeline_id: "t".into(), account_id: account.into(), seq, at }
    }

    #[test]
    fn a_post_is_read_at_the_first_mark_that_reaches_it() {
        let mut r = Receipts::default();
        r.add_mark(&mark("a", 3, 100));
        r.add_mark(&mark("a", 7, 200));
        r.add_mark(&mark("a", 5, 300)); // behind: ignored
        r.add_mark(&mark("b", 4, 150));
        assert_eq!(r.read_by("t", 2), vec![("a".to_string(), 100), ("b".to_string(), 150)]);
        assert_eq!(r.read_by("t", 5), vec![("a".to_string(), 200)]);
        assert_eq!(r.read_by("t", 8), vec![]);
        assert_eq!(r.read_position("t", "a"), Some(7));
    }

    #[test]
    fn delivered_is_not_read() {
        let mut r = Receipts::default();
        r.set_receipts("t", &[mark("a", 5, 10)], &[DeliveredMark { account_id: "b".into(), seq: 6 }, DeliveredMark { account_id: "a".into(), seq: 3 }]);
        assert_eq!(r.delivered_to("t", 5), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.read_by("t", 5), vec![("a".to_string(), 10)]);
        assert_eq!(r.delivered_to("t", 7), Vec::<String>::new());
    }

    #[test]
    fn reads_are_sent_only_forward() {
        let mut r = Receipts::default();
        assert!(r.should_send_read("t", 4));
        assert!(!r.should_send_read("t", 4));
        assert!(!r.should_send_read("t", 2));
        assert!(r.should_send_read("t", 5));
    }

    #[test]
    fn alerts_make_a_post_known_as_urgent_and_acks_count_once() {
        let mut r = Receipts::default();
        let alert = UrgentAlert { timeline_id: "t".into(), seq: 9, level: AlertLevel::SecondCall, sender_account_id: "d".into(), created_at: 5 };
        assert!(r.on_frame(&ServerFrame::UrgentAlert(alert.clone())));
        for _ in 0..2 {
            r.on_frame(&ServerFrame::UrgentAck { timeline_id: "t".into(), seq: 9, account_id: "n".into(), at: 7 });
        }
        let u = r.urgent_state("t", 9).unwrap();
        assert!(u.escalated_at.is_some());
        assert_eq!(u.acks, vec![UrgentAck { account_id: "n".into(), at: 7 }]);
        assert_eq!(r.take_alerts(), vec![alert]);
        assert!(r.take_alerts().is_empty());
    }
}

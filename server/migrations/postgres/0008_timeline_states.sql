-- The MLS state of each timeline in a table of its own. Keep in step with
-- ../sqlite/0008_timeline_states.sql.
--
-- Every batch of posts moves its timelines' heads (`head_seq`). With the
-- public state and the GroupInfo (each carries the ratchet tree: several KiB
-- for a team of twenty) in the same row, each head update read and rewrote
-- a record of many KiB, most of it on overflow pages, and few timelines
-- shared a page. The heads now live in narrow rows, many to a page; the state
-- is written only by commits and proposals.
CREATE TABLE timeline_states (
    timeline_id TEXT PRIMARY KEY REFERENCES timelines(id),
    public_state BYTEA NOT NULL,
    group_info BYTEA NOT NULL
);

INSERT INTO timeline_states (timeline_id, public_state, group_info)
    SELECT id, public_state, group_info FROM timelines;

ALTER TABLE timelines DROP COLUMN public_state;
ALTER TABLE timelines DROP COLUMN group_info;

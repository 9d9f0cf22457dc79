-- Seqs after a restore. Keep in step with ../sqlite/0009_restore_floor.sql.
--
-- A restore brings the timelines back to the backup's heads, but devices
-- may already hold later posts (stored after the backup, now lost) at the
-- seqs that come next, and a client ignores a seq it has processed. So
-- `tsunagu-server restore` moves every head far past anything stored since
-- the backup; `seq_floor` is that head. A timeline's newest post is then
-- below its head until the next post, which the backup's completeness check
-- allows for: the head is the newest post or the floor, whichever is higher.
ALTER TABLE timelines ADD COLUMN seq_floor BIGINT NOT NULL DEFAULT 0;
-- The head and the epoch as restored: seqs after `restored_seq`, up to
-- `seq_floor`, were lost. Devices are told (the `restored` frame) until they
-- acknowledge a seq past the floor; they send their own lost posts again,
-- and one whose group is past `restored_epoch` (it merged a lost commit)
-- rejoins.
ALTER TABLE timelines ADD COLUMN restored_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE timelines ADD COLUMN restored_epoch BIGINT NOT NULL DEFAULT 0;

-- The timeline policy (roles, end dates, call lists, consent seq) of each
-- timeline's current epoch, as the JSON of tsunagu_protocol::policy::
-- TimelinePolicy. It is a copy of the MLS group-context extension in
-- `public_state`, kept for quick checks (who may post, whose access ends,
-- who is on call) without loading the group. NULL for timelines created
-- before policies existed.
ALTER TABLE timelines ADD COLUMN policy TEXT;

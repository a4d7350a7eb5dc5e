-- The group-committed hold claim (0003) with less work per batch and per hold, the same answers
-- (docs/contracts.md, "PostgreSQL"). Measured with pgbench on batches of 64 one-seat holds.
--
-- Per batch: two statements instead of six. The batch check and the user locks are one; the
-- sold check, the limit, the claims and the mirror rows are one (data-modifying CTEs), so
-- PostgreSQL starts two executors per batch, not six. Only a batch with a short hold (a seat
-- another live hold claimed meanwhile) runs a third, which gives that hold's claims back: it
-- must see the rows the second one inserted.
--
-- Per hold: no foreign-key check of the mirror row against `events`. PostgreSQL ran it as a
-- trigger per inserted row (a query locking the event's row), about a sixth of the batch's cost,
-- to learn what is always true: the service writes holds only for events whose inventory it
-- loaded, and no event row is ever deleted. Orders keep their foreign keys.
ALTER TABLE holds DROP CONSTRAINT holds_event_id_fkey;

CREATE OR REPLACE FUNCTION tiketi_claim_holds(
    p_holds uuid[], p_events text[], p_users text[], p_expires timestamptz[], p_caps integer[],
    p_seat_hold integer[], p_seats text[])
RETURNS TABLE (r_index integer, r_kind text, r_seat text, r_owner uuid, r_owner_expires timestamptz,
               r_count integer)
LANGUAGE plpgsql
-- Generic plans (see 0003): planned once per connection, whatever the batch's length.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n_users integer;
    n_seats integer;
    sold_i integer[];
    sold_seat text[];
    limit_i integer[];
    limit_m integer[];
    short integer[];
BEGIN
    -- One claimant per (event, user) at a time (see tiketi_claim_hold), taken in one order: the
    -- sorted subquery is read in order, one lock per row. Its own statement, before any read
    -- below: each statement's snapshot then sees what the previous holder of a lock committed.
    -- The same statement counts the distinct users and seats for the batch check.
    SELECT count(*)::integer,
           (SELECT count(DISTINCT (p_events[s.i], s.seat))::integer
            FROM unnest(p_seat_hold, p_seats) AS s(i, seat))
    INTO n_users, n_seats
    FROM (SELECT pg_advisory_xact_lock(l.k)
          FROM (SELECT DISTINCT hashtextextended('tiketi-user:' || e || ':' || usr, 0) AS k
                FROM unnest(p_events, p_users) AS u(e, usr) ORDER BY 1) AS l) AS locked;
    -- A user twice (two users whose lock keys collide count as one: refused too, which is safe)
    -- or a seat twice: refused whole, decided hold by hold by the caller.
    IF n_users < cardinality(p_users) OR n_seats < cardinality(p_seats) THEN
        RAISE EXCEPTION 'a batch of holds shares a user or a seat' USING ERRCODE = 'TK003';
    END IF;

    -- Sold seats refuse their hold; the per-user limit (over the user's live claims of other
    -- holds) refuses the rest that would pass it; every seat of the holds still in the running
    -- is claimed, sorted, when free, lapsed or already the hold's own; a hold that got all its
    -- seats is mirrored in `holds` (seats in the order asked), one that got fewer is short.
    WITH asked AS (
        SELECT s.i, s.seat, s.j FROM unnest(p_seat_hold, p_seats) WITH ORDINALITY AS s(i, seat, j)),
    sold AS (
        SELECT a.i, l.seat_id AS seat FROM asked a
        JOIN order_lines l ON l.event_id = p_events[a.i] AND l.live AND l.seat_id = a.seat),
    unsold AS (
        SELECT a.i, count(*)::integer AS n FROM asked a
        WHERE NOT EXISTS (SELECT 1 FROM sold WHERE sold.i = a.i) GROUP BY a.i),
    counted AS (
        SELECT u.i, u.n,
               (SELECT count(*)::integer FROM seat_claims c
                WHERE c.event_id = p_events[u.i] AND c.user_id = p_users[u.i]
                  AND c.expires_at > now() AND c.hold_id <> p_holds[u.i]) AS m
        FROM unsold u),
    running AS (SELECT c.i, c.n FROM counted c WHERE c.m + c.n <= p_caps[c.i]),
    taken AS (
        INSERT INTO seat_claims AS c (event_id, seat_id, hold_id, user_id, expires_at)
        SELECT p_events[a.i], a.seat, p_holds[a.i], p_users[a.i], p_expires[a.i]
        FROM asked a JOIN running r ON r.i = a.i
        ORDER BY 1, 2
        ON CONFLICT (event_id, seat_id) DO UPDATE
            SET hold_id = EXCLUDED.hold_id, user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at
            WHERE c.expires_at <= now() OR c.hold_id = EXCLUDED.hold_id
        RETURNING c.hold_id),
    got AS (SELECT t.hold_id, count(*)::integer AS n FROM taken t GROUP BY t.hold_id),
    whole AS (SELECT r.i FROM running r JOIN got g ON g.hold_id = p_holds[r.i] WHERE g.n = r.n),
    mirrored AS (
        INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at)
        SELECT p_holds[a.i], p_events[a.i], p_users[a.i], array_agg(a.seat ORDER BY a.j), p_expires[a.i]
        FROM asked a JOIN whole w ON w.i = a.i
        GROUP BY a.i)
    SELECT coalesce((SELECT array_agg(s.i ORDER BY s.i, s.seat) FROM sold s), '{}'),
           coalesce((SELECT array_agg(s.seat ORDER BY s.i, s.seat) FROM sold s), '{}'),
           coalesce((SELECT array_agg(c.i ORDER BY c.i) FROM counted c WHERE c.m + c.n > p_caps[c.i]), '{}'),
           coalesce((SELECT array_agg(c.m ORDER BY c.i) FROM counted c WHERE c.m + c.n > p_caps[c.i]), '{}'),
           ARRAY(SELECT r.i FROM running r WHERE NOT EXISTS (SELECT 1 FROM whole w WHERE w.i = r.i)
                 ORDER BY r.i)
    INTO sold_i, sold_seat, limit_i, limit_m, short;

    IF cardinality(sold_i) > 0 THEN
        RETURN QUERY
            SELECT x.i, 'sold'::text, x.seat, NULL::uuid, NULL::timestamptz, NULL::integer
            FROM unnest(sold_i, sold_seat) WITH ORDINALITY AS x(i, seat, j) ORDER BY x.j;
    END IF;
    IF cardinality(limit_i) > 0 THEN
        RETURN QUERY
            SELECT x.i, 'limit'::text, NULL::text, NULL::uuid, NULL::timestamptz, x.m
            FROM unnest(limit_i, limit_m) AS x(i, m) ORDER BY x.i;
    END IF;
    IF cardinality(short) > 0 THEN
        -- A short hold gives back what it took (a claim it replaced had lapsed: a lapsed claim
        -- and no claim mean the same), and learns who has the rest.
        DELETE FROM seat_claims c
        USING unnest(p_seat_hold, p_seats) AS s(i, seat)
        WHERE s.i = ANY (short) AND c.event_id = p_events[s.i] AND c.seat_id = s.seat
          AND c.hold_id = p_holds[s.i];
        RETURN QUERY
            SELECT s.i, 'held'::text, c.seat_id, c.hold_id, c.expires_at, NULL::integer
            FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
            JOIN seat_claims c ON c.event_id = p_events[s.i] AND c.seat_id = s.seat
            WHERE s.i = ANY (short) AND c.hold_id <> p_holds[s.i] AND c.expires_at > now()
            ORDER BY s.i, c.seat_id;
        -- Beaten by a hold that lapsed or was released within this statement: say so anyway.
        RETURN QUERY
            SELECT s.i, 'held'::text, s.seat, NULL::uuid, NULL::timestamptz, NULL::integer
            FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
            WHERE s.i = ANY (short) AND NOT EXISTS (
                SELECT 1 FROM unnest(p_seat_hold, p_seats) AS o(i, seat)
                JOIN seat_claims c ON c.event_id = p_events[o.i] AND c.seat_id = o.seat
                WHERE o.i = s.i AND c.hold_id <> p_holds[o.i] AND c.expires_at > now())
            ORDER BY s.i, s.seat;
    END IF;
END
$$;

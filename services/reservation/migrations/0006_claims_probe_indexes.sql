-- The claims and the confirm probe indexes, whatever the tables' sizes when a connection planned
-- them (docs/contracts.md, "PostgreSQL"). Same signatures, same answers.
--
-- `tiketi_claim_holds` runs generic plans (0003): each connection plans its statements once and
-- keeps the plans until something invalidates them (an ANALYZE of the table). Its sold check was
-- a join of the batch's seats with `order_lines`; a connection that planned it while the table
-- was small (a new database, the first minutes of a first on-sale: the pool's connections are
-- opened at start) kept a hash join over a sequential scan of every order line of every event,
-- in every batch, as the table grew. Measured in `make bench`'s contended run (5,000 seats): 538
-- sequential scans of `order_lines` reading 3.37 million rows to sell 5,000 seats; in the
-- 100,000-seat run each batch read up to 45,000 rows.
--
-- Now the sold check is one probe of the live-line index per asked seat (a correlated scalar
-- subquery: PostgreSQL runs it per row and never turns it into a join), the short-hold path
-- probes the claims' primary key seat by seat, and the three functions run with sequential
-- scans off, so no plan made on small tables scans a large one. Every statement in them reads
-- rows by key; none needs a scan.

CREATE OR REPLACE FUNCTION tiketi_claim_holds(
    p_holds uuid[], p_events text[], p_users text[], p_expires timestamptz[], p_caps integer[],
    p_seat_hold integer[], p_seats text[])
RETURNS TABLE (r_index integer, r_kind text, r_seat text, r_owner uuid, r_owner_expires timestamptz,
               r_count integer)
LANGUAGE plpgsql
-- Generic plans (see 0003): planned once per connection, whatever the batch's length; and no
-- sequential scan in them, whatever the tables' sizes when they were planned (see above).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    n_users integer;
    n_seats integer;
    sold_i integer[];
    sold_seat text[];
    limit_i integer[];
    limit_m integer[];
    short integer[];
    k integer;
    k_seat text;
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
    -- One probe of the live-line index per asked seat: a scalar subquery, which PostgreSQL runs
    -- per row and never turns into a join over the whole table.
    sold AS (
        SELECT a.i, a.seat FROM asked a
        WHERE (SELECT l.live FROM order_lines l
               WHERE l.event_id = p_events[a.i] AND l.seat_id = a.seat AND l.live)),
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
        -- Each seat its own probe of the claims' primary key (see `sold`).
        FOR k, k_seat IN
            SELECT s.i, s.seat FROM unnest(p_seat_hold, p_seats) AS s(i, seat) WHERE s.i = ANY (short)
        LOOP
            DELETE FROM seat_claims c
            WHERE c.event_id = p_events[k] AND c.seat_id = k_seat AND c.hold_id = p_holds[k];
        END LOOP;
        RETURN QUERY
            SELECT s.i, 'held'::text, c.seat_id, c.hold_id, c.expires_at, NULL::integer
            FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
            CROSS JOIN LATERAL (
                SELECT c.seat_id, c.hold_id, c.expires_at FROM seat_claims c
                WHERE c.event_id = p_events[s.i] AND c.seat_id = s.seat LIMIT 1) AS c
            WHERE s.i = ANY (short) AND c.hold_id <> p_holds[s.i] AND c.expires_at > now()
            ORDER BY s.i, c.seat_id;
        -- Beaten by a hold that lapsed or was released within this statement: say so anyway.
        RETURN QUERY
            SELECT s.i, 'held'::text, s.seat, NULL::uuid, NULL::timestamptz, NULL::integer
            FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
            WHERE s.i = ANY (short) AND NOT EXISTS (
                SELECT 1 FROM unnest(p_seat_hold, p_seats) AS o(i, seat)
                WHERE o.i = s.i
                  AND (SELECT c.hold_id <> p_holds[o.i] AND c.expires_at > now() FROM seat_claims c
                       WHERE c.event_id = p_events[o.i] AND c.seat_id = o.seat))
            ORDER BY s.i, s.seat;
    END IF;
END
$$;

-- The single-hold claim and the confirm read rows by key only; plpgsql may keep generic plans of
-- theirs too, so the same setting holds there.
ALTER FUNCTION tiketi_claim_hold(uuid, text, text, text[], timestamptz, integer) SET enable_seqscan = off;
ALTER FUNCTION tiketi_confirm(uuid, text, text, text, jsonb, uuid, timestamptz, integer, timestamptz, integer)
    SET enable_seqscan = off;

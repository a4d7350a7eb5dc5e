-- Group commit of holds (docs/contracts.md, "PostgreSQL"): the claims of many concurrent hold
-- requests decided in one statement, one transaction, one commit. Each hold keeps the answer
-- `tiketi_claim_hold` (0002) would give it alone: all its seats or none, refused when a seat is
-- sold, claimed by another live hold, or when the user's held and bought seats would pass the cap.
-- A refused hold takes nothing and refuses no other hold of the batch.
--
-- Input, one entry per hold (index i = 1..n): p_holds[i], p_events[i], p_users[i], p_expires[i],
-- p_caps[i]; and one entry per seat: p_seat_hold[j] (the index of its hold) and p_seats[j], in
-- the hold's seat order. The caller guarantees that no two holds of a batch share a user of an
-- event or a seat of an event (such requests go into different batches); a batch that breaks
-- this is refused whole (SQLSTATE TK003) rather than decided wrongly.
--
-- Returns no row for a hold that is claimed and mirrored in `holds`; otherwise rows
-- (r_index, r_kind, r_seat, r_owner, r_owner_expires, r_count) with the meaning of
-- `tiketi_claim_hold`'s rows ('sold', 'held', 'limit').
--
-- Lock order, the same as `tiketi_claim_hold` and `tiketi_confirm` so no two of them deadlock:
-- every user lock of the batch first (advisory, sorted by key), then the claims, sorted by
-- (event, seat).
CREATE FUNCTION tiketi_claim_holds(
    p_holds uuid[], p_events text[], p_users text[], p_expires timestamptz[], p_caps integer[],
    p_seat_hold integer[], p_seats text[])
RETURNS TABLE (r_index integer, r_kind text, r_seat text, r_owner uuid, r_owner_expires timestamptz,
               r_count integer)
LANGUAGE plpgsql
-- Generic plans: every statement here is an index nested loop over the batch's arrays whatever
-- their length (checked with EXPLAIN on a 200,000-seat event), and re-planning them for each
-- call (custom plans) cost about as much as deciding a small batch.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    sold_i integer[];
    sold_seat text[];
    limit_i integer[];
    limit_m integer[];
    refused integer[];
    short integer[];
BEGIN
    -- Few statements per batch: each costs PostgreSQL an executor start-up, whatever its rows.
    IF (SELECT count(DISTINCT (e, usr)) FROM unnest(p_events, p_users) AS u(e, usr)) < cardinality(p_users)
       OR (SELECT count(DISTINCT (p_events[s.i], s.seat)) FROM unnest(p_seat_hold, p_seats) AS s(i, seat))
          < cardinality(p_seats) THEN
        RAISE EXCEPTION 'a batch of holds shares a user or a seat' USING ERRCODE = 'TK003';
    END IF;

    -- One claimant per (event, user) at a time (see tiketi_claim_hold), taken in one order: the
    -- sorted subquery is read in order, one lock per row.
    PERFORM pg_advisory_xact_lock(l.k)
    FROM (SELECT DISTINCT hashtextextended('tiketi-user:' || e || ':' || usr, 0) AS k
          FROM unnest(p_events, p_users) AS u(e, usr) ORDER BY 1) AS l;

    -- Sold seats.
    SELECT coalesce(array_agg(s.i ORDER BY s.i, l.seat_id), '{}'),
           coalesce(array_agg(l.seat_id ORDER BY s.i, l.seat_id), '{}')
    INTO sold_i, sold_seat
    FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
    JOIN order_lines l ON l.event_id = p_events[s.i] AND l.live AND l.seat_id = s.seat;
    IF cardinality(sold_i) > 0 THEN
        RETURN QUERY
            SELECT x.i, 'sold'::text, x.seat, NULL::uuid, NULL::timestamptz, NULL::integer
            FROM unnest(sold_i, sold_seat) WITH ORDINALITY AS x(i, seat, j) ORDER BY x.j;
        refused := ARRAY(SELECT DISTINCT x FROM unnest(sold_i) AS x);
    ELSE
        refused := '{}';
    END IF;

    -- The per-user limit, over the user's live claims of other holds.
    SELECT coalesce(array_agg(t.i ORDER BY t.i), '{}'), coalesce(array_agg(t.m ORDER BY t.i), '{}')
    INTO limit_i, limit_m
    FROM (
        SELECT a.i, a.n,
               (SELECT count(*)::integer FROM seat_claims c
                WHERE c.event_id = p_events[a.i] AND c.user_id = p_users[a.i]
                  AND c.expires_at > now() AND c.hold_id <> p_holds[a.i]) AS m
        FROM (SELECT s.i, count(*)::integer AS n FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
              WHERE NOT (s.i = ANY (refused)) GROUP BY s.i) a
    ) t
    WHERE t.m + t.n > p_caps[t.i];
    IF cardinality(limit_i) > 0 THEN
        RETURN QUERY
            SELECT x.i, 'limit'::text, NULL::text, NULL::uuid, NULL::timestamptz, x.m
            FROM unnest(limit_i, limit_m) AS x(i, m) ORDER BY x.i;
        refused := refused || limit_i;
    END IF;

    -- Claim every seat of the holds still in the running, sorted: a seat is taken when free,
    -- lapsed or already the hold's own. A hold that got fewer claims than seats is short.
    WITH taken AS (
        INSERT INTO seat_claims AS c (event_id, seat_id, hold_id, user_id, expires_at)
        SELECT p_events[s.i], s.seat, p_holds[s.i], p_users[s.i], p_expires[s.i]
        FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
        WHERE NOT (s.i = ANY (refused))
        ORDER BY 1, 2
        ON CONFLICT (event_id, seat_id) DO UPDATE
            SET hold_id = EXCLUDED.hold_id, user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at
            WHERE c.expires_at <= now() OR c.hold_id = EXCLUDED.hold_id
        RETURNING c.hold_id),
    got AS (SELECT hold_id, count(*) AS n FROM taken GROUP BY hold_id),
    asked AS (
        SELECT s.i, count(*) AS n FROM unnest(p_seat_hold, p_seats) AS s(i, seat)
        WHERE NOT (s.i = ANY (refused)) GROUP BY s.i)
    SELECT ARRAY(
        SELECT a.i FROM asked a LEFT JOIN got g ON g.hold_id = p_holds[a.i]
        WHERE coalesce(g.n, 0) < a.n)
    INTO short;

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
        refused := refused || short;
    END IF;

    -- Mirror the claimed holds, their seats in the order asked.
    INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at)
    SELECT p_holds[s.i], p_events[s.i], p_users[s.i], array_agg(s.seat ORDER BY s.j), p_expires[s.i]
    FROM unnest(p_seat_hold, p_seats) WITH ORDINALITY AS s(i, seat, j)
    WHERE NOT (s.i = ANY (refused))
    GROUP BY s.i;
END
$$;

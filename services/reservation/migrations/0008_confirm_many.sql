-- Group commit of confirms (docs/contracts.md, "PostgreSQL"): concurrent confirms share one
-- statement and one transaction, as hold claims do since 0003.
--
-- `tiketi_confirm` now answers a conflict that surfaced as a constraint violation (a seat sold or
-- the hold ordered by a confirm that committed meanwhile: 'sold' with the sold seats, 'confirmed'
-- with the order; a seat gone from the inventory: 'seats-removed' with those seats) instead of
-- raising it, so within a batch one confirm's conflict is its own answer and the others commit.
-- Everything else is as in 0007.
--
-- `tiketi_confirm_many` runs `tiketi_confirm` for each confirm of a batch, in order, in one
-- transaction; each row carries its confirm's index (1-based). An error it raises (a deadlock
-- broken by PostgreSQL) fails the whole batch, which the service then decides confirm by confirm.
-- `tiketi_confirm_contexts` is the confirms' first read (the idempotency record and the hold) for
-- a batch, by index probes whatever the tables held when a connection planned it (0006).

CREATE OR REPLACE FUNCTION tiketi_confirm(
    p_hold uuid, p_user text, p_key text, p_fingerprint text, p_body jsonb, p_order uuid,
    p_created timestamptz, p_cap integer, p_sale_ends timestamptz, p_admission_ttl integer)
RETURNS TABLE (r_outcome text, r_seats text[], r_order uuid, r_count integer)
LANGUAGE plpgsql
-- Reads rows by key only (0006).
SET enable_seqscan = off
AS $$
DECLARE
    h holds%ROWTYPE;
    mine integer;
    claimed integer;
    violated text;
BEGIN
    SELECT * INTO h FROM holds WHERE hold_id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF h.status = 'confirmed' THEN
        RETURN QUERY SELECT 'confirmed'::text, NULL::text[], o.order_id, NULL::integer
            FROM (SELECT 1) one LEFT JOIN orders o ON o.hold_id = p_hold;
        RETURN;
    END IF;
    IF h.status <> 'held' THEN
        RETURN QUERY SELECT h.status, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF p_sale_ends IS NOT NULL AND now() >= p_sale_ends THEN
        RETURN QUERY SELECT 'sale-ended'::text, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF h.expires_at <= now()
       AND p_admission_ttl IS NOT NULL AND now() >= h.created_at + make_interval(secs => p_admission_ttl) THEN
        RETURN QUERY SELECT 'admission-ended'::text, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    -- The user's other live claims and this hold's seats within the cap, counted under the user's
    -- lock, for every confirm: a claim that began after this hold lapsed by its clock (see the
    -- header) may have taken the user's cap while this confirm still saw the hold live.
    PERFORM pg_advisory_xact_lock(hashtextextended('tiketi-user:' || h.event_id || ':' || h.user_id, 0));
    SELECT count(*) INTO mine FROM seat_claims c
    WHERE c.event_id = h.event_id AND c.user_id = h.user_id AND c.expires_at > now()
      AND c.hold_id <> p_hold;
    IF mine + cardinality(h.seat_ids) > p_cap THEN
        RETURN QUERY SELECT 'limit'::text, NULL::text[], NULL::uuid, mine;
        RETURN;
    END IF;
    BEGIN
        INSERT INTO seat_claims AS c (event_id, seat_id, hold_id, user_id, expires_at)
        SELECT h.event_id, s, p_hold, h.user_id, 'infinity' FROM unnest(h.seat_ids) AS s ORDER BY s
        ON CONFLICT (event_id, seat_id) DO UPDATE
            SET hold_id = EXCLUDED.hold_id, user_id = EXCLUDED.user_id, expires_at = 'infinity'
            WHERE c.hold_id = EXCLUDED.hold_id OR c.expires_at <= now();
        GET DIAGNOSTICS claimed = ROW_COUNT;
        IF claimed < cardinality(h.seat_ids) THEN
            RAISE EXCEPTION 'seat claimed by a live hold' USING ERRCODE = 'TK001';
        END IF;
        INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint, status_code, response)
        VALUES (p_user, p_key, p_fingerprint, 201, p_body) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key in use' USING ERRCODE = 'TK002';
        END IF;
        UPDATE holds SET status = 'confirmed' WHERE hold_id = p_hold;
        INSERT INTO orders (order_id, event_id, user_id, hold_id, created_at)
        VALUES (p_order, h.event_id, p_user, p_hold, p_created);
        INSERT INTO order_lines (order_id, event_id, seat_id)
        SELECT p_order, h.event_id, s FROM unnest(h.seat_ids) AS s;
    EXCEPTION
        WHEN SQLSTATE 'TK001' THEN
            RETURN QUERY SELECT 'held'::text,
                (SELECT array_agg(c.seat_id ORDER BY c.seat_id) FROM seat_claims c
                 WHERE c.event_id = h.event_id AND c.seat_id = ANY (h.seat_ids)
                   AND c.hold_id <> p_hold AND c.expires_at > now()),
                NULL::uuid, NULL::integer;
            RETURN;
        WHEN SQLSTATE 'TK002' THEN
            RETURN QUERY SELECT 'key-in-use'::text, NULL::text[], NULL::uuid, NULL::integer;
            RETURN;
        -- A seat sold, or this hold ordered, by a confirm that committed while this one ran (it
        -- read the hold and the claims before): answered here, so one confirm's conflict is an
        -- answer within a batch, not the batch's error. Read after the other committed.
        WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
            IF violated = 'order_lines_one_live_booking_per_seat' THEN
                RETURN QUERY SELECT 'sold'::text,
                    (SELECT array_agg(l.seat_id ORDER BY l.seat_id) FROM order_lines l
                     WHERE l.event_id = h.event_id AND l.live AND l.seat_id = ANY (h.seat_ids)),
                    NULL::uuid, NULL::integer;
                RETURN;
            ELSIF violated = 'orders_hold_id_key' THEN
                RETURN QUERY SELECT 'confirmed'::text, NULL::text[],
                    (SELECT o.order_id FROM orders o WHERE o.hold_id = p_hold), NULL::integer;
                RETURN;
            END IF;
            RAISE;
        -- A seat of the hold left the event's inventory (a configuration change) since it was held.
        WHEN foreign_key_violation THEN
            RETURN QUERY SELECT 'seats-removed'::text,
                (SELECT array_agg(s ORDER BY s) FROM unnest(h.seat_ids) AS s
                 WHERE NOT EXISTS (SELECT 1 FROM seats x WHERE x.event_id = h.event_id AND x.seat_id = s)),
                NULL::uuid, NULL::integer;
            RETURN;
    END;
    RETURN QUERY SELECT 'created'::text, NULL::text[], p_order, NULL::integer;
END
$$;


CREATE FUNCTION tiketi_confirm_many(
    p_holds uuid[], p_users text[], p_keys text[], p_fingerprints text[], p_bodies jsonb[],
    p_orders uuid[], p_created timestamptz[], p_caps integer[], p_sale_ends timestamptz[],
    p_admission_ttls integer[])
RETURNS TABLE (r_i integer, r_outcome text, r_seats text[], r_order uuid, r_count integer)
LANGUAGE plpgsql
AS $$
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_holds), 0) LOOP
        RETURN QUERY SELECT i, c.r_outcome, c.r_seats, c.r_order, c.r_count
            FROM tiketi_confirm(p_holds[i], p_users[i], p_keys[i], p_fingerprints[i], p_bodies[i],
                                p_orders[i], p_created[i], p_caps[i], p_sale_ends[i],
                                p_admission_ttls[i]) AS c;
    END LOOP;
END
$$;

CREATE FUNCTION tiketi_confirm_contexts(p_users text[], p_keys text[], p_holds uuid[])
RETURNS TABLE (r_i integer, fingerprint text, status_code smallint, response jsonb, hold_id uuid,
               event_id text, user_id text, seat_ids text[], expires_at timestamptz, status text)
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$
    SELECT q.i::integer, ik.fingerprint, ik.status_code, ik.response, h.hold_id, h.event_id,
           h.user_id, h.seat_ids, h.expires_at, h.status
    FROM unnest(p_users, p_keys, p_holds) WITH ORDINALITY AS q(q_user, q_key, q_hold, i)
    LEFT JOIN idempotency_keys ik ON ik.user_id = q.q_user AND ik.idempotency_key = q.q_key
    LEFT JOIN holds h ON h.hold_id = q.q_hold
    ORDER BY q.i
$$;

-- The purchase limit holds when a hold is confirmed at the instant it lapses (docs/contracts.md,
-- "PostgreSQL"). Same signature, same answers otherwise.
--
-- `tiketi_confirm` counted the user's claims against the cap only for a hold that had lapsed. A
-- confirm whose transaction began just before its hold lapsed saw the hold live and skipped the
-- count, while a claim of another hold of the same user that began just after saw the first
-- hold's claims lapsed and took the cap again: both committed, and the user bought twice the
-- cap (4 + 4 seats at maxSeatsPerUser 4). A client knows `expiresAt`, so this can be aimed at.
-- Now every confirm takes the user's lock (after the hold row, before the seat claims: the lock
-- order of every function) and counts the user's other live claims in a statement after it, so
-- whichever of the two commits second sees the other: the confirm answers 'limit', or the claim
-- refuses the new hold. A hold confirmed in the ordinary way always passes (its seats passed the
-- same count when it was claimed, under the same lock).

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
    END;
    RETURN QUERY SELECT 'created'::text, NULL::text[], p_order, NULL::integer;
END
$$;

-- Wireshark / tshark dissector for xdpblast's datagrams (wire version 5) and
-- its TCP stream header (stream version 3).
--
--   tshark -X lua_script:scripts/xdpblast.lua -r capture.pcapng -Y xdpblast
--   wireshark -X lua_script:scripts/xdpblast.lua capture.pcapng
--   (or copy it to ~/.local/lib/wireshark/plugins/)
--
-- Datagrams are found by their magic ("XBLS") and version on any UDP port,
-- so the data port and the control port (data port + 1) need no setting.
-- The layout mirrors src/wire/message.rs: a 32-byte header, a body whose
-- length the header gives, and, when the sender and receiver share a key, a
-- seal behind a control message or Meta (an 8-byte counter and a 32-byte
-- keyed BLAKE3 tag), or a 16-byte AEAD tag behind a data frame's payload.
-- A session whose Hello says "encrypted" (the default with a key) carries
-- ciphertext in its data frames: they are shown as encrypted payloads.
-- Only what the dissector saw a Hello for is known to be encrypted.
--
-- AF_XDP bypasses packet capture (XDP redirect on the receiver, copy-mode
-- transmit on the sender), so capture a transfer with `recv --mode udp` on
-- the receiving side, or on a bridge or port mirror between the two hosts.

local p = Proto("xdpblast", "xdpblast file transfer")

local KINDS = {
    [1] = "Data", [2] = "Meta", [16] = "Hello", [17] = "HelloAck", [18] = "Nack",
    [19] = "End", [20] = "Done", [21] = "Abort",
}
local HEADER_LEN = 32
local SESSION_INFO_LEN = 56
local HELLO_LEN = SESSION_INFO_LEN + 16 + 4
local NACK_FIXED_LEN = 40
local SEAL_LEN = 40
local DATA_TAG_LEN = 16

local f = p.fields
f.magic = ProtoField.uint32("xdpblast.magic", "Magic", base.HEX)
f.version = ProtoField.uint8("xdpblast.version", "Version")
f.kind = ProtoField.uint8("xdpblast.kind", "Kind", base.DEC, KINDS)
f.body_len = ProtoField.uint16("xdpblast.body_len", "Body length")
f.session = ProtoField.uint64("xdpblast.session", "Session", base.HEX)
f.cookie = ProtoField.uint64("xdpblast.cookie", "Cookie", base.HEX)
f.seq = ProtoField.uint64("xdpblast.seq", "Sequence")
f.chunk = ProtoField.uint64("xdpblast.chunk", "Chunk")
f.payload = ProtoField.bytes("xdpblast.payload", "Payload")
f.last = ProtoField.bool("xdpblast.last", "Ends a pass")
f.file_size = ProtoField.uint64("xdpblast.file_size", "File size")
f.chunk_size = ProtoField.uint32("xdpblast.chunk_size", "Chunk size")
f.info_flags = ProtoField.uint32("xdpblast.info_flags", "Info flags", base.HEX)
f.n_chunks = ProtoField.uint64("xdpblast.n_chunks", "Chunks")
f.digest = ProtoField.bytes("xdpblast.digest", "BLAKE3 digest")
f.source = ProtoField.bytes("xdpblast.source", "Source id")
f.hello_flags = ProtoField.uint32("xdpblast.hello_flags", "Hello flags", base.HEX)
f.via_tcp = ProtoField.bool("xdpblast.via_tcp", "File over TCP", 32, nil, 0x1)
f.keyed = ProtoField.bool("xdpblast.keyed", "Keyed", 32, nil, 0x2)
f.encrypted = ProtoField.bool("xdpblast.encrypted", "Payloads encrypted", 32, nil, 0x80)
f.chacha = ProtoField.bool("xdpblast.chacha", "ChaCha20-Poly1305 (else AES-256-GCM)", 32, nil, 0x100)
f.manifest_len = ProtoField.uint64("xdpblast.manifest_len", "Tree: manifest bytes")
f.entries = ProtoField.uint32("xdpblast.entries", "Tree: entries")
f.resume_from = ProtoField.uint64("xdpblast.resume_from", "Resumes at byte")
f.encrypted_payload = ProtoField.bytes("xdpblast.data.encrypted", "Encrypted payload")
f.name = ProtoField.string("xdpblast.name", "File name")
f.data_port = ProtoField.uint16("xdpblast.data_port", "Data source port (one per transmit queue)")
f.file_mode = ProtoField.uint32("xdpblast.file_mode", "File mode", base.OCT)
f.mtime_ns = ProtoField.int64("xdpblast.mtime_ns", "File mtime (ns since the epoch)")
f.data_bytes = ProtoField.uint64("xdpblast.data_bytes", "Sparse file: bytes of data")
f.delay_us = ProtoField.uint64("xdpblast.delay_us", "Answer delay (us)")
f.opened = ProtoField.bool("xdpblast.opened", "Session opened", 8, nil, 0x1)
f.tcp_only = ProtoField.bool("xdpblast.tcp_only", "Receiver takes TCP only", 8, nil, 0x2)
f.max_datagram = ProtoField.uint32("xdpblast.max_datagram", "Largest datagram taken (0: unknown)")
f.round = ProtoField.uint64("xdpblast.nack.round", "Round")
f.part = ProtoField.uint16("xdpblast.nack.part", "Part")
f.loss_bp = ProtoField.uint16("xdpblast.nack.loss_bp", "Loss (basis points, 65535 = no sample)")
f.nbits = ProtoField.uint32("xdpblast.nack.nbits", "Chunks described")
f.received = ProtoField.uint64("xdpblast.nack.received", "Chunks held")
f.base = ProtoField.uint64("xdpblast.nack.base", "First chunk described")
f.high = ProtoField.uint64("xdpblast.nack.high", "Highest chunk taken + 1")
f.prefix = ProtoField.uint64("xdpblast.nack.prefix", "Chunks held from the start")
f.bitmap = ProtoField.bytes("xdpblast.nack.bitmap", "Missing-chunk bitmap")
f.missing = ProtoField.uint32("xdpblast.nack.missing", "Chunks missing")
f.retransmits = ProtoField.uint64("xdpblast.retransmits", "Sender's retransmits")
f.ok = ProtoField.bool("xdpblast.done.ok", "Verified")
f.reason = ProtoField.string("xdpblast.abort.reason", "Reason")
f.data_tag = ProtoField.bytes("xdpblast.data.tag", "Data tag (AEAD, 128 bits)")
f.seal_counter = ProtoField.uint64("xdpblast.seal.counter", "Seal counter")
f.seal_tag = ProtoField.bytes("xdpblast.seal.tag", "Seal tag (keyed BLAKE3)")
f.trailer = ProtoField.bytes("xdpblast.trailer", "Trailing bytes")
f.stream_flags = ProtoField.uint8("xdpblast.stream.flags", "Stream flags", base.HEX)

local e_bad_body = ProtoExpert.new("xdpblast.bad_body", "Malformed xdpblast body", expert.group.MALFORMED,
    expert.severity.ERROR)
local e_bad_length = ProtoExpert.new("xdpblast.bad_length", "Body length past the datagram's end",
    expert.group.MALFORMED, expert.severity.ERROR)
p.experts = { e_bad_body, e_bad_length }

local function session_info(tree, body, off)
    local t = tree:add(body(off, SESSION_INFO_LEN), "Session info")
    t:add(f.file_size, body(off, 8))
    t:add(f.chunk_size, body(off + 8, 4))
    t:add(f.info_flags, body(off + 12, 4))
    t:add(f.n_chunks, body(off + 16, 8))
    if bit.band(body(off + 12, 4):uint(), 1) ~= 0 then
        t:add(f.digest, body(off + 24, 32))
    end
    return body(off, 8):uint64()
end

-- Each returns a short summary for the Info column, or nil when the body is
-- malformed for its kind.
local bodies = {}
-- Sessions whose Hello said their payloads are encrypted (by session id).
local encrypted_sessions = {}

bodies[1] = function(tree, body, seq, sid)
    tree:add(f.chunk, seq)
    local encrypted = encrypted_sessions[sid]
    if body:len() > 0 then tree:add(encrypted and f.encrypted_payload or f.payload, body()) end
    return string.format("chunk %s, %d bytes%s", tostring(seq:uint64()), body:len(), encrypted and ", encrypted" or "")
end

bodies[2] = function(tree, body, seq)
    if body:len() < SESSION_INFO_LEN then return nil end
    tree:add(f.last, seq, seq:uint64() == UInt64(1))
    local size = session_info(tree, body, 0)
    return string.format("%s bytes%s", tostring(size), seq:uint64() == UInt64(1) and ", ends a pass" or "")
end

bodies[16] = function(tree, body, seq, sid)
    if body:len() < HELLO_LEN then return nil end
    local size = session_info(tree, body, 0)
    tree:add(f.source, body(SESSION_INFO_LEN, 16))
    local flags = body(SESSION_INFO_LEN + 16, 4)
    local ft = tree:add(f.hello_flags, flags)
    ft:add(f.via_tcp, flags)
    ft:add(f.keyed, flags)
    ft:add(f.encrypted, flags)
    ft:add(f.chacha, flags)
    local encrypted = bit.band(flags:uint(), 0x80) ~= 0
    encrypted_sessions[sid] = encrypted
    local at = HELLO_LEN
    -- Flag 4: a count byte and that many source ports, one per TX queue.
    if bit.band(flags:uint(), 4) ~= 0 then
        if body:len() < at + 1 then return nil end
        local n = body(at, 1):uint()
        if n == 0 or n > 64 or body:len() < at + 1 + 2 * n then return nil end
        for i = 0, n - 1 do tree:add(f.data_port, body(at + 1 + 2 * i, 2)) end
        at = at + 1 + 2 * n
    end
    -- Flag 8: the file's permission bits and mtime.
    if bit.band(flags:uint(), 8) ~= 0 then
        if body:len() < at + 12 then return nil end
        tree:add(f.file_mode, body(at, 4))
        tree:add(f.mtime_ns, body(at + 4, 8))
        at = at + 12
        -- Flag 16: the file has holes; the bytes its data occupies.
        if bit.band(flags:uint(), 16) ~= 0 then
            if body:len() < at + 8 then return nil end
            tree:add(f.data_bytes, body(at, 8))
            at = at + 8
        end
    end
    -- Flag 32: a tree's manifest length and entry count.
    if bit.band(flags:uint(), 32) ~= 0 then
        if body:len() < at + 12 then return nil end
        tree:add(f.manifest_len, body(at, 8))
        tree:add(f.entries, body(at + 8, 4))
        at = at + 12
    end
    -- Flag 64: the sender's answer to a resume offer.
    if bit.band(flags:uint(), 64) ~= 0 then
        if body:len() < at + 8 then return nil end
        tree:add(f.resume_from, body(at, 8))
        at = at + 8
    end
    local name = ""
    local name_len = body:len() - at
    if name_len > 255 then return nil end
    if name_len > 0 then
        local r = body(at, name_len)
        tree:add(f.name, r)
        name = r:string(ENC_UTF_8) .. ", "
    end
    local via = bit.band(flags:uint(), 1) ~= 0 and ", over TCP" or ""
    local enc = encrypted and ", encrypted" or ""
    return string.format("%s%s bytes%s%s", name, tostring(size), via, enc)
end

bodies[17] = function(tree, body)
    if body:len() < 9 then return nil end
    tree:add(f.delay_us, body(0, 8))
    tree:add(f.opened, body(8, 1))
    tree:add(f.tcp_only, body(8, 1))
    if body:len() >= 13 then tree:add(f.max_datagram, body(9, 4)) end
    local flags = body(8, 1):uint()
    if bit.band(flags, 2) ~= 0 then return "TCP only: send over TCP" end
    return bit.band(flags, 1) ~= 0 and "session opened" or "cookie offered"
end

bodies[18] = function(tree, body, seq)
    if body:len() < NACK_FIXED_LEN then return nil end
    local nbits = body(4, 4):uint()
    local bitmap_len = math.floor((nbits + 7) / 8)
    if body:len() - NACK_FIXED_LEN ~= bitmap_len then return nil end
    tree:add(f.round, seq)
    tree:add(f.part, body(0, 2))
    tree:add(f.loss_bp, body(2, 2))
    tree:add(f.nbits, body(4, 4))
    tree:add(f.received, body(8, 8))
    tree:add(f.base, body(16, 8))
    tree:add(f.high, body(24, 8))
    tree:add(f.prefix, body(32, 8))
    local missing = 0
    if bitmap_len > 0 then
        local bm = body(NACK_FIXED_LEN, bitmap_len)
        tree:add(f.bitmap, bm)
        for i = 0, bitmap_len - 1 do
            local b = bm(i, 1):uint()
            while b ~= 0 do
                missing = missing + bit.band(b, 1)
                b = bit.rshift(b, 1)
            end
        end
    end
    tree:add(f.missing, missing):set_generated()
    return string.format("round %s, %d missing, prefix %s", tostring(seq:uint64()), missing,
        tostring(body(32, 8):uint64()))
end

bodies[19] = function(tree, body)
    if body:len() < SESSION_INFO_LEN then return nil end
    local size = session_info(tree, body, 0)
    if body:len() >= SESSION_INFO_LEN + 8 then
        tree:add(f.retransmits, body(SESSION_INFO_LEN, 8))
    end
    return string.format("%s bytes sent", tostring(size))
end

bodies[20] = function(tree, body)
    if body:len() < 40 then return nil end
    tree:add(f.ok, body(0, 1), body(0, 1):uint() == 1)
    tree:add(f.digest, body(8, 32))
    return body(0, 1):uint() == 1 and "verified" or "digest MISMATCH"
end

bodies[21] = function(tree, body)
    if body:len() == 0 then return "" end
    local r = body(0, body:len())
    tree:add(f.reason, r)
    return r:string(ENC_UTF_8)
end

local function dissect_datagram(buf, pinfo, root)
    local len = buf:len()
    local kind = buf(5, 1):uint()
    local body_len = buf(6, 2):uint()
    pinfo.cols.protocol = "xdpblast"
    local tree = root:add(p, buf(), "xdpblast, " .. (KINDS[kind] or "?"))
    tree:add(f.magic, buf(0, 4))
    tree:add(f.version, buf(4, 1))
    tree:add(f.kind, buf(5, 1))
    local bl = tree:add(f.body_len, buf(6, 2))
    tree:add(f.session, buf(8, 8))
    tree:add(f.cookie, buf(16, 8))
    local seq = buf(24, 8)
    tree:add(f.seq, seq)
    if HEADER_LEN + body_len > len then
        bl:add_proto_expert_info(e_bad_length)
        pinfo.cols.info = (KINDS[kind] or "?") .. " [body length past the end]"
        return len
    end
    local body = body_len > 0 and buf(HEADER_LEN, body_len):tvb() or ByteArray.new(""):tvb("empty body")
    local summary = bodies[kind](tree, body, seq, buf(8, 8):bytes():tohex())
    if summary == nil then
        tree:add_proto_expert_info(e_bad_body)
        summary = "[malformed body]"
    end
    local rest = len - HEADER_LEN - body_len
    if rest == SEAL_LEN then
        local s = tree:add(buf(HEADER_LEN + body_len, SEAL_LEN), "Seal")
        s:add(f.seal_counter, buf(HEADER_LEN + body_len, 8))
        s:add(f.seal_tag, buf(HEADER_LEN + body_len + 8, 32))
        summary = summary .. " [sealed]"
    elseif kind == 1 and rest == DATA_TAG_LEN then
        tree:add(f.data_tag, buf(HEADER_LEN + body_len, DATA_TAG_LEN))
        summary = summary .. (encrypted_sessions[buf(8, 8):bytes():tohex()] and " [encrypted]" or " [tagged]")
    elseif rest > 0 then
        tree:add(f.trailer, buf(HEADER_LEN + body_len, rest))
    end
    pinfo.cols.info = string.format("%s, session %s: %s", KINDS[kind], buf(8, 8):bytes():tohex():lower(), summary)
    return len
end

local function heuristic(buf, pinfo, root)
    if buf:len() < HEADER_LEN then return false end
    if buf(0, 4):uint() ~= 0x58424c53 or buf(4, 1):uint() ~= 5 then return false end
    if KINDS[buf(5, 1):uint()] == nil then return false end
    dissect_datagram(buf, pinfo, root)
    return true
end

p:register_heuristic("udp", heuristic)

-- The TCP stream header ("XBLT", version 3): the first 48 bytes a TCP sender
-- writes on each of its streams; that stream's range of the file follows.
local ps = Proto("xdpblast_stream", "xdpblast TCP stream header")
local fs = ps.fields
fs.magic = ProtoField.uint32("xdpblast_stream.magic", "Magic", base.HEX)
fs.version = ProtoField.uint8("xdpblast_stream.version", "Version")
fs.file_size = ProtoField.uint64("xdpblast_stream.file_size", "File size")
fs.session = ProtoField.uint64("xdpblast_stream.session", "Session", base.HEX)
fs.cookie = ProtoField.uint64("xdpblast_stream.cookie", "Cookie", base.HEX)
fs.source = ProtoField.bytes("xdpblast_stream.source", "Source id")
fs.index = ProtoField.uint8("xdpblast_stream.index", "Stream index")
fs.count = ProtoField.uint16("xdpblast_stream.count", "Streams")

local function stream_heuristic(buf, pinfo, root)
    if buf:len() < 48 then return false end
    if buf(0, 4):uint() ~= 0x58424c54 or buf(4, 1):uint() ~= 3 then return false end
    pinfo.cols.protocol = "xdpblast"
    local t = root:add(ps, buf(0, 48))
    t:add(fs.magic, buf(0, 4))
    t:add(fs.version, buf(4, 1))
    t:add(fs.index, buf(5, 1))
    t:add(fs.count, buf(6, 2))
    t:add(fs.file_size, buf(8, 8))
    t:add(fs.session, buf(16, 8))
    t:add(fs.cookie, buf(24, 8))
    t:add(fs.source, buf(32, 16))
    pinfo.cols.info = string.format("stream header, session %s, %s bytes", buf(16, 8):bytes():tohex():lower(),
        tostring(buf(8, 8):uint64()))
    return true
end

ps:register_heuristic("tcp", stream_heuristic)

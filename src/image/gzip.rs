//! Parallel gzip compression of layers: the uncompressed stream is cut into fixed-size chunks,
//! each chunk is compressed into an independent gzip member (on a small pool of threads), and
//! the members are written in order. A concatenation of gzip members is one valid gzip file
//! (RFC 1952, section 2.2) that gzip readers decompress to the whole stream (Go's
//! `compress/gzip` used by container runtimes and registry tools, zlib's `gunzip`, Python's
//! `gzip`; in Rust, `flate2`'s `MultiGzDecoder`).
//!
//! The output depends only on the input, how it is written, the compression level and the chunk
//! size, never on the number of threads: layer digests stay reproducible on any machine.
//!
//! The first chunk is compressed as it is written, on the calling thread, by a plain
//! [`GzEncoder`]: a stream of at most one chunk is exactly the single member a `GzEncoder`
//! writes, so small layers (function code, most deps) keep the digests they always had. (The
//! deflate output depends on the sizes of the writes that feed it, hence streaming the first
//! chunk rather than compressing it whole.) Later chunks are collected whole and compressed in
//! one go, so their members do not depend on how the input was split into writes.
//!
//! Memory stays bounded: at most `workers + 2` chunks are being compressed or waiting to be
//! written at any time, each holding its input and its compressed output.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::mem;
use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use flate2::write::GzEncoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes of uncompressed stream per gzip member. Large enough that cutting the stream costs
/// almost nothing in size (each member starts without the previous one's 32 KiB window: a few
/// tenths of a percent more bytes on compressible files, 1 MiB chunks cost half as much as
/// 512 KiB ones), small enough that the chunks in flight stay a few MiB; a fixed value, so that
/// the output is the same everywhere.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The most compression threads one stream uses, whatever the number of cores: bounds the
/// memory a layer takes to about `(MAX_WORKERS + 3) * 2 * CHUNK_SIZE` plus one deflate state
/// per thread.
pub const MAX_WORKERS: usize = 8;

/// How many more chunks than threads may be in flight, so that a thread finding its next chunk
/// does not wait for the oldest member to be written.
const IN_FLIGHT_EXTRA: usize = 2;

/// The number of compression threads for this machine: the cores this process may use (CPU
/// affinity and cgroup quota included), at most [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_WORKERS)
}

/// A gzip writer that compresses fixed-size chunks of its input as consecutive gzip members,
/// in parallel past the first chunk (see the module documentation).
///
/// [`finish`](Self::finish) must be called to write the last member; `flush` only flushes the
/// inner writer, never cutting a member short (that would make the output depend on when
/// flushes happen).
pub struct ParallelGzEncoder<W: Write> {
    out: Output<W>,
    level: Compression,
    chunk_size: usize,
    workers: usize,
    /// Bytes of input the first member took.
    first_len: usize,
    /// The chunk being filled, past the first.
    pending: Vec<u8>,
    /// Buffers of written members, reused for the next chunks.
    spare: Vec<Vec<u8>>,
    /// The compressor of the calling thread, for chunks compressed without the pool.
    local: Option<MemberCompressor>,
    /// The compression threads, started when the second full chunk is handed over (never for a
    /// stream of two chunks or less, nor with a single worker).
    pool: Option<Pool>,
}

/// Where compressed bytes go: through the first member's encoder, then straight to the inner
/// writer.
enum Output<W: Write> {
    /// The first member, compressed as its input is written.
    First(Box<GzEncoder<W>>),
    /// Later members, each compressed from a whole chunk.
    Members(W),
    /// Finishing the first member failed: the stream is unusable.
    Broken,
}

impl<W: Write> ParallelGzEncoder<W> {
    /// An encoder with [`CHUNK_SIZE`] chunks and [`default_workers`] threads.
    pub fn new(inner: W, level: Compression) -> Self {
        Self::with_options(inner, level, CHUNK_SIZE, default_workers())
    }

    /// An encoder cutting the input every `chunk_size` bytes and compressing on up to
    /// `workers` threads (1 compresses everything on the calling thread).
    pub fn with_options(inner: W, level: Compression, chunk_size: usize, workers: usize) -> Self {
        assert!(chunk_size > 0, "the chunk size must not be zero");
        Self {
            out: Output::First(Box::new(GzEncoder::new(inner, level))),
            level,
            chunk_size,
            workers: workers.max(1),
            first_len: 0,
            pending: Vec::new(),
            spare: Vec::new(),
            local: None,
            pool: None,
        }
    }

    /// Compresses and writes what is left, waits for every member to be written and returns
    /// the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        match mem::replace(&mut self.out, Output::Broken) {
            // A stream of one chunk at most (an empty one included): one plain member.
            Output::First(encoder) => (*encoder).finish(),
            Output::Members(inner) => {
                self.out = Output::Members(inner);
                if !self.pending.is_empty() {
                    self.submit(true)?;
                }
                if let Some(pool) = &mut self.pool {
                    while let Some(member) = pool.next_member()? {
                        write_member(&mut self.out, &mut self.spare, member)?;
                    }
                }
                // Stops the threads (idle by now).
                self.pool = None;
                match mem::replace(&mut self.out, Output::Broken) {
                    Output::Members(inner) => Ok(inner),
                    _ => unreachable!("the output was just put back"),
                }
            }
            Output::Broken => Err(broken()),
        }
    }

    /// Hands the pending chunk (the stream's `last` one, or not) to compression, writing
    /// whatever members are ready, in order.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        // One worker, or a second and last chunk: no thread is worth starting.
        let inline = self.workers == 1 || (last && self.pool.is_none());
        if !inline {
            let (workers, level) = (self.workers, self.level);
            let pool = self.pool.get_or_insert_with(|| Pool::start(workers, level));
            // Bounded memory: wait for the oldest member while too many are in flight.
            while pool.in_flight() >= workers + IN_FLIGHT_EXTRA {
                let member = pool.next_member()?.expect("a member is in flight");
                write_member(&mut self.out, &mut self.spare, member)?;
            }
        }
        let next = if last {
            Vec::new()
        } else {
            self.spare.pop().unwrap_or_default()
        };
        let input = mem::replace(&mut self.pending, next);
        let output = self.spare.pop().unwrap_or_default();
        let member = Member { input, output };
        let Some(pool) = self.pool.as_mut().filter(|_| !inline) else {
            let level = self.level;
            let compressor = self
                .local
                .get_or_insert_with(|| MemberCompressor::new(level));
            let member = compressor.compress(member);
            return write_member(&mut self.out, &mut self.spare, member);
        };
        pool.send(member)?;
        while let Some(member) = pool.ready_member()? {
            write_member(&mut self.out, &mut self.spare, member)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.out {
            Output::First(encoder) if self.first_len < self.chunk_size => {
                let room = self.chunk_size - self.first_len;
                let n = encoder.write(&buf[..buf.len().min(room)])?;
                self.first_len += n;
                return Ok(n);
            }
            // The first chunk is full and more input comes: the first member ends here.
            Output::First(_) => {
                let Output::First(encoder) = mem::replace(&mut self.out, Output::Broken) else {
                    unreachable!("matched just above")
                };
                self.out = Output::Members((*encoder).finish()?);
            }
            Output::Members(_) => {}
            Output::Broken => return Err(broken()),
        }
        // A full chunk is handed over only when more input comes: the last chunk is handed
        // over by `finish`.
        if self.pending.len() >= self.chunk_size {
            self.submit(false)?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(buffer_capacity(self.chunk_size));
        }
        let n = buf.len().min(self.chunk_size - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            // Not the encoder's own flush: a sync flush would change the compressed bytes.
            Output::First(encoder) => encoder.get_mut().flush(),
            Output::Members(inner) => inner.flush(),
            Output::Broken => Err(broken()),
        }
    }
}

fn broken() -> io::Error {
    io::Error::other("the gzip stream failed earlier")
}

/// Writes a compressed member to the inner writer and keeps its buffers for the next chunks.
fn write_member<W: Write>(
    out: &mut Output<W>,
    spare: &mut Vec<Vec<u8>>,
    member: Member,
) -> io::Result<()> {
    let Output::Members(inner) = out else {
        unreachable!("members past the first are written once the first is finished")
    };
    inner.write_all(&member.output)?;
    for mut buf in [member.input, member.output] {
        buf.clear();
        spare.push(buf);
    }
    Ok(())
}

/// A chunk of input and, once compressed, the gzip member it became.
struct Member {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// The capacity of every chunk buffer: a whole chunk as input, or its member as output when
/// the chunk does not compress (stored blocks' overhead and gzip framing). One size for both, so
/// that buffers can swap roles without ever being reallocated.
fn buffer_capacity(chunk_size: usize) -> usize {
    chunk_size + (chunk_size >> 12) + (chunk_size >> 14) + 64
}

/// Compresses whole chunks into gzip members, keeping its deflate state from one chunk to the
/// next (one per thread, instead of a fresh state allocated for every chunk).
struct MemberCompressor {
    deflate: Compress,
    header: [u8; 10],
}

impl MemberCompressor {
    fn new(level: Compression) -> Self {
        // The header a plain `GzEncoder` writes: no name, no time, "unknown" operating system,
        // and the extra flags telling the fastest or best compression.
        let extra_flags = if level.level() >= Compression::best().level() {
            2
        } else if level.level() <= Compression::fast().level() {
            4
        } else {
            0
        };
        Self {
            deflate: Compress::new(level, false),
            header: [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, extra_flags, 255],
        }
    }

    /// Compresses `member.input` into `member.output` as one complete gzip member.
    fn compress(&mut self, mut member: Member) -> Member {
        let (input, output) = (&member.input, &mut member.output);
        output.clear();
        output.reserve_exact(buffer_capacity(input.len()));
        output.extend_from_slice(&self.header);
        self.deflate.reset();
        loop {
            let done = self.deflate.total_in() as usize;
            let status = self
                .deflate
                .compress_vec(&input[done..], output, FlushCompress::Finish)
                .expect("deflate accepts any input");
            if status == Status::StreamEnd {
                break;
            }
            output.reserve(64 * 1024);
        }
        let mut crc = Crc::new();
        crc.update(input);
        output.extend_from_slice(&crc.sum().to_le_bytes());
        output.extend_from_slice(&crc.amount().to_le_bytes());
        member
    }
}

/// A compression job: the member's position in the stream and its chunk.
type Job = (u64, Member);
/// A compressed member, or the panic message of the thread that failed to compress it.
type Done = (u64, Result<Member, String>);

/// The compression threads, and the members handed to them that are not written yet.
struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Members sent to the threads.
    sent: u64,
    /// The position of the next member to write.
    next: u64,
    /// Members compressed ahead of `next`.
    ready: BTreeMap<u64, Member>,
}

impl Pool {
    fn start(workers: usize, level: Compression) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..workers)
            .map(|_| {
                let queue = Arc::clone(&queue);
                let done_tx = done_tx.clone();
                thread::spawn(move || {
                    let mut compressor = MemberCompressor::new(level);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = queue
                            .lock()
                            .map_err(drop)
                            .and_then(|q| q.recv().map_err(drop));
                        let Ok((seq, member)) = job else { return };
                        let result =
                            panic::catch_unwind(AssertUnwindSafe(|| compressor.compress(member)))
                                .map_err(|e| panic_message(&*e));
                        if done_tx.send((seq, result)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            done,
            threads,
            sent: 0,
            next: 0,
            ready: BTreeMap::new(),
        }
    }

    fn in_flight(&self) -> usize {
        (self.sent - self.next) as usize
    }

    fn send(&mut self, member: Member) -> io::Result<()> {
        let jobs = self.jobs.as_ref().expect("the pool is running");
        jobs.send((self.sent, member))
            .map_err(|_| io::Error::other("the gzip compression threads stopped"))?;
        self.sent += 1;
        Ok(())
    }

    /// The next member in stream order, waiting for it; `None` once all are written.
    fn next_member(&mut self) -> io::Result<Option<Member>> {
        if self.next == self.sent {
            return Ok(None);
        }
        loop {
            if let Some(member) = self.ready.remove(&self.next) {
                self.next += 1;
                return Ok(Some(member));
            }
            let done = self
                .done
                .recv()
                .map_err(|_| io::Error::other("the gzip compression threads stopped"))?;
            self.store(done)?;
        }
    }

    /// The next member in stream order if it is already compressed.
    fn ready_member(&mut self) -> io::Result<Option<Member>> {
        while let Ok(done) = self.done.try_recv() {
            self.store(done)?;
        }
        let member = self.ready.remove(&self.next);
        if member.is_some() {
            self.next += 1;
        }
        Ok(member)
    }

    fn store(&mut self, (seq, result): Done) -> io::Result<()> {
        let member =
            result.map_err(|e| io::Error::other(format!("gzip compression failed: {e}")))?;
        self.ready.insert(seq, member);
        Ok(())
    }
}

impl Drop for Pool {
    /// Closes the job queue and waits for the threads, which finish the chunk they hold.
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a compression thread panicked".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// Deterministic bytes, partly compressible (text-like runs) and partly not.
    fn sample(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state % 4 == 0 {
                out.extend_from_slice(b"def handler(event, context):\n    return event\n");
            } else {
                out.extend_from_slice(&state.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// How the tests write their input: in uneven pieces, as a tar stream comes.
    const PIECE: usize = 7919;

    /// `input` compressed by a `ParallelGzEncoder`, written in pieces of [`PIECE`] bytes.
    fn encode(input: &[u8], chunk_size: usize, workers: usize) -> Vec<u8> {
        let mut encoder =
            ParallelGzEncoder::with_options(Vec::new(), Compression::new(6), chunk_size, workers);
        for piece in input.chunks(PIECE) {
            encoder.write_all(piece).unwrap();
        }
        encoder.finish().unwrap()
    }

    fn multi_decode(gz: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut plain)
            .unwrap();
        plain
    }

    /// The number of gzip members, by decoding one member after the other.
    fn count_members(gz: &[u8]) -> usize {
        let mut rest = gz;
        let mut members = 0;
        while !rest.is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(rest);
            io::copy(&mut decoder, &mut io::sink()).unwrap();
            rest = decoder.into_inner();
            members += 1;
        }
        members
    }

    /// What an external program writes to stdout when given `input` on stdin.
    fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success(), "{program} failed");
        out.stdout
    }

    #[test]
    fn a_stream_of_one_chunk_is_exactly_what_gz_encoder_writes() {
        let chunk = 64 * 1024;
        for len in [0, 1, 5000, chunk] {
            let input = sample(len);
            let mut plain = GzEncoder::new(Vec::new(), Compression::new(6));
            for piece in input.chunks(PIECE) {
                plain.write_all(piece).unwrap();
            }
            let expected = plain.finish().unwrap();
            for workers in [1, 4] {
                let gz = encode(&input, chunk, workers);
                assert!(gz == expected, "{len} bytes, {workers} workers");
            }
        }
    }

    #[test]
    fn members_past_the_first_carry_the_gz_encoder_header_and_decode_alone() {
        let input = sample(300 * 1024);
        for level in [0, 1, 6, 9] {
            let level = Compression::new(level);
            let plain = GzEncoder::new(Vec::new(), level).finish().unwrap();
            let mut compressor = MemberCompressor::new(level);
            // Twice: the reused deflate state starts afresh.
            for _ in 0..2 {
                let member = compressor.compress(Member {
                    input: input.clone(),
                    output: Vec::new(),
                });
                assert_eq!(member.output[..10], plain[..10], "{level:?}");
                assert_eq!(count_members(&member.output), 1);
                assert!(multi_decode(&member.output) == input, "{level:?}");
            }
        }
    }

    #[test]
    fn a_large_stream_is_split_into_members_that_decompress_to_the_input() {
        let chunk = 64 * 1024;
        let input = sample(10 * chunk + 123);
        let gz = encode(&input, chunk, 3);
        assert_eq!(count_members(&gz), 11);
        assert!(multi_decode(&gz) == input);
        // Exactly a whole number of chunks: no empty member at the end.
        for chunks in [2, 4] {
            let gz = encode(&input[..chunks * chunk], chunk, 3);
            assert_eq!(count_members(&gz), chunks);
            assert!(multi_decode(&gz) == input[..chunks * chunk]);
        }
    }

    #[test]
    fn the_output_does_not_depend_on_the_number_of_workers() {
        let chunk = 32 * 1024;
        let input = sample(40 * chunk + 999);
        let one = encode(&input, chunk, 1);
        assert!(multi_decode(&one) == input);
        for workers in [2, 3, 8] {
            assert!(encode(&input, chunk, workers) == one, "{workers} workers");
        }
    }

    #[test]
    fn members_past_the_first_do_not_depend_on_how_the_input_is_written() {
        let chunk = 32 * 1024;
        let input = sample(6 * chunk + 5);
        let gz = encode(&input, chunk, 2);
        let mut encoder =
            ParallelGzEncoder::with_options(Vec::new(), Compression::new(6), chunk, 2);
        for piece in input[..chunk].chunks(PIECE) {
            encoder.write_all(piece).unwrap();
        }
        encoder.write_all(&input[chunk..]).unwrap();
        assert!(encoder.finish().unwrap() == gz);
    }

    #[test]
    fn the_default_chunk_size_splits_large_streams() {
        let input = sample(2 * CHUNK_SIZE + 1);
        let mut encoder = ParallelGzEncoder::new(Vec::new(), Compression::new(6));
        encoder.write_all(&input).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(count_members(&gz), 3);
        assert!(multi_decode(&gz) == input);
    }

    #[test]
    fn gzip_and_python_read_every_member() {
        let chunk = 64 * 1024;
        let input = sample(5 * chunk + 77);
        let gz = encode(&input, chunk, 4);
        assert_eq!(count_members(&gz), 6);
        assert!(pipe("gzip", &["-dc"], &gz) == input, "gzip -dc");
        let python = "import gzip, sys; \
                      sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
        assert!(
            pipe("python3", &["-c", python], &gz) == input,
            "python3 gzip"
        );
    }
}

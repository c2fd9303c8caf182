//! The allocator settings a process running the proxy box's dataplane
//! wants (glibc): the `mobidesk-dataplane` binary sets them itself first
//! thing; a process that runs the dataplane in a thread of its own (the
//! benchmarks, the lab) calls [`tune_allocator`] to measure the same thing.
//!
//! Every VNIC allocates its socket buffers (512 KiB each way by default) up
//! front, zeroed. Served by `mmap` they cost nothing until touched. glibc's
//! default raises its mmap threshold after the first large free and then
//! serves them from the heap, where calloc clears them in full: 1 MiB of
//! memset per connection, a third of the connection rate. Pinning the
//! threshold is not enough either: a request of any size is carved from the
//! top of the heap when the top has room, so the top pad goes to 0.

/// Pins glibc's mmap threshold to 128 KiB and its top pad to 0. Returns
/// whether glibc took both.
#[allow(unsafe_code)]
pub fn tune_allocator() -> bool {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes the allocator's parameters, under the
    // allocator's own lock; glibc allows it at any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, 0) == 1
    }
}

// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// The session server's fast path (dataplane/README.md, "The server's fast
// path"): two tc programs on the server's uplink that label and rewrite the
// established TCP connections of migrated (labelled) sessions inside the
// kernel, so their bytes do not cross into user space and back.
//
//   mobidesk_out (uplink egress):  a segment from a labelled session's
//     virtual address whose connection has a proxy label: source virtual ->
//     physical, the proxy's label inserted (dataplane/LABELS.md).
//   mobidesk_in (uplink ingress):  a segment carrying one of this server's
//     labels that names its very connection at the session's current
//     address: label stripped, destination physical -> virtual.
//
// Everything else is left to the user-space engine (src/server/), which
// stays the one authority: it fills the maps below and handles SYNs, UDP,
// ICMP, IP options, fragments and every packet the maps do not explain.
// Packets of labelled sessions the egress program cannot take are
// redirected into the session TUN device (the engine's input); the ingress
// program just lets them go on to the nftables steering, which sends them
// there. A packet this program touched is never touched again: the egress
// program passes what the engine wrote (into the uplink TUN), and the ingress program
// marks what it did so that the steering leaves it alone.
//
// Built by dataplane/build.rs with clang (-target bpf); loaded by
// src/io/fastpath.rs (aya). The GPL licence string is what the kernel asks
// of programs that use its GPL-only helpers.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// The label option as it travels (dataplane/LABELS.md): NOP NOP 0x9E 6 label.
#define LABEL_SPACE 8
#define LABEL_WORD0 0x06 // option length, byte 3
#define OPT_NOP 0x01
#define OPT_LABEL 0x9E

#define ETH_LEN 14
#define IP_OFF ETH_LEN
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)
#define IP_FRAG_MASK 0x3FFF // more-fragments flag and offset

// Key of an outgoing connection, as the session sees it (network order).
struct out_key {
	__u32 session_addr; // the virtual address
	__u32 remote_addr;
	__u16 session_port;
	__u16 remote_port;
};

struct out_value {
	__u32 physical;    // the session's address on this subnet now
	__u32 proxy_label; // as on the wire (network order)
};

// This server's label (network order) -> its connection.
struct in_value {
	__u32 session_addr;
	__u32 remote_addr;
	__u32 physical;
	__u16 session_port;
	__u16 remote_port;
};

struct config {
	__u32 session_tun_ifindex; // the engine's input for the slow path
	__u32 engine_tun_ifindex;  // where the engine writes what it handled
	__u32 done_mark;           // skb mark of what mobidesk_in handled
};

// Counters, per CPU; src/io/fastpath.rs sums them (same order there).
enum counter {
	OUT_PACKETS,
	OUT_BYTES,
	IN_PACKETS,
	IN_BYTES,
	REWRITES,
	TO_ENGINE,   // labelled-session packets redirected to the engine
	ADJUST_FAILED, // the kernel refused to grow or shrink a header
	COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct out_key);
	__type(value, struct out_value);
} out_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct in_value);
} in_conns SEC(".maps");

// Labelled sessions: virtual address -> physical address.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} labelled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += n;
}

// The IPv4 header checksum of the `words` 32-bit words at `ip` (its own
// checksum field must be zero).
static __always_inline __u16 ip_checksum(struct iphdr *ip, __u32 words)
{
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)ip, words * 4, 0);
	if (sum < 0)
		return 0;
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

// Replaces the address at `off` (source or destination) and fixes the TCP
// checksum (its pseudo-header holds the address; a partial checksum is
// updated as partial). The IPv4 header checksum is recomputed by the caller.
static __always_inline int replace_addr(struct __sk_buff *skb, __u32 off, __u32 ip_len,
					__u32 from, __u32 to)
{
	if (from == to)
		return 0;
	__u32 tcp_csum = IP_OFF + ip_len + offsetof(struct tcphdr, check);
	if (bpf_l4_csum_replace(skb, tcp_csum, from, to, BPF_F_PSEUDO_HDR | sizeof(to)))
		return -1;
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0))
		return -1;
	count(REWRITES, 1);
	return 0;
}

// The IPv4 header after the Ethernet header, if its first `len` bytes
// (options included) are in the packet's linear data; NULL if not. Called
// again after every helper that may move the packet (its pointers go stale).
static __always_inline struct iphdr *ip_header(struct __sk_buff *skb, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_LEN;
	if ((void *)ip + len > data_end)
		return NULL;
	return ip;
}

// The settings, for an IPv4 packet; NULL for anything else (left alone).
static __always_inline struct config *settings_for(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return NULL;
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

SEC("classifier")
int mobidesk_out(struct __sk_buff *skb)
{
	struct config *cfg = settings_for(skb);
	if (!cfg)
		return TC_ACT_OK;
	// Handled by the engine already.
	if (skb->ingress_ifindex == cfg->engine_tun_ifindex)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_LEN;
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	__u32 session_addr = ip->saddr;
	__u32 *physical = bpf_map_lookup_elem(&labelled, &session_addr);
	if (!physical)
		return TC_ACT_OK; // not a labelled session: not ours

	// From here on the packet is a labelled session's: the fast path or
	// the engine.
	if (ip->ihl != 5 || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(IP_FRAG_MASK)))
		goto engine;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end || tcp->syn)
		goto engine;
	struct out_key key = {
		.session_addr = session_addr,
		.remote_addr = ip->daddr,
		.session_port = tcp->source,
		.remote_port = tcp->dest,
	};
	struct out_value *conn = bpf_map_lookup_elem(&out_conns, &key);
	if (!conn)
		goto engine;
	__u32 to = conn->physical;
	__u32 label = conn->proxy_label;

	// Room for the option right after the fixed header. The segment size
	// stays: the VNIC's MSS leaves room for the label (LABELS.md).
	if (bpf_skb_adjust_room(skb, LABEL_SPACE, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(ADJUST_FAILED, 1);
		goto engine;
	}
	ip = ip_header(skb, sizeof(*ip) + LABEL_SPACE);
	if (!ip)
		return TC_ACT_SHOT; // cannot happen: the room was just made
	__u8 *opt = (void *)(ip + 1);
	opt[0] = OPT_NOP;
	opt[1] = OPT_NOP;
	opt[2] = OPT_LABEL;
	opt[3] = LABEL_WORD0;
	*(__u32 *)(opt + 4) = label;
	ip->ihl = 5 + LABEL_SPACE / 4;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + LABEL_SPACE);
	if (replace_addr(skb, IP_SRC_OFF, sizeof(struct iphdr) + LABEL_SPACE, session_addr, to)) {
		// Half-done: lost (TCP sends it again) rather than sent so.
		count(ADJUST_FAILED, 1);
		return TC_ACT_SHOT;
	}
	ip = ip_header(skb, sizeof(*ip) + LABEL_SPACE);
	if (!ip)
		return TC_ACT_SHOT;
	ip->check = 0;
	ip->check = ip_checksum(ip, 5 + LABEL_SPACE / 4);
	count(OUT_PACKETS, 1);
	count(OUT_BYTES, skb->len);
	return TC_ACT_OK;

engine:
	count(TO_ENGINE, 1);
	return bpf_redirect(cfg->session_tun_ifindex, 0);
}

SEC("classifier")
int mobidesk_in(struct __sk_buff *skb)
{
	struct config *cfg = settings_for(skb);
	if (!cfg)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_LEN;
	// Only the exact layout this side's peer writes: the label option
	// alone. Anything else is the engine's (through the steering).
	if ((void *)ip + sizeof(*ip) + LABEL_SPACE > data_end)
		return TC_ACT_OK;
	if (ip->ihl != 5 + LABEL_SPACE / 4 || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(IP_FRAG_MASK)))
		return TC_ACT_OK;
	__u8 *opt = (void *)(ip + 1);
	if (opt[0] != OPT_NOP || opt[1] != OPT_NOP || opt[2] != OPT_LABEL || opt[3] != LABEL_WORD0)
		return TC_ACT_OK;
	__u32 label = *(__u32 *)(opt + 4);
	struct tcphdr *tcp = (void *)(opt + LABEL_SPACE);
	if ((void *)(tcp + 1) > data_end || tcp->syn)
		return TC_ACT_OK;
	struct in_value *conn = bpf_map_lookup_elem(&in_conns, &label);
	// The label must name this very connection at the session's current
	// address; the engine counts what does not (forged_label).
	if (!conn || conn->physical != ip->daddr || conn->remote_addr != ip->saddr ||
	    conn->remote_port != tcp->source || conn->session_port != tcp->dest)
		return TC_ACT_OK;
	__u32 from = ip->daddr;
	__u32 to = conn->session_addr;

	if (bpf_skb_adjust_room(skb, -LABEL_SPACE, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(ADJUST_FAILED, 1);
		return TC_ACT_OK;
	}
	ip = ip_header(skb, sizeof(*ip));
	if (!ip)
		return TC_ACT_SHOT; // cannot happen: 20 bytes were there before
	ip->ihl = 5;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) - LABEL_SPACE);
	if (replace_addr(skb, IP_DST_OFF, sizeof(struct iphdr), from, to)) {
		count(ADJUST_FAILED, 1);
		return TC_ACT_SHOT;
	}
	ip = ip_header(skb, sizeof(*ip));
	if (!ip)
		return TC_ACT_SHOT;
	ip->check = 0;
	ip->check = ip_checksum(ip, 5);
	skb->mark = cfg->done_mark;
	count(IN_PACKETS, 1);
	count(IN_BYTES, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

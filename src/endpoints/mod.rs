//! Callback endpoints: which URLs verve agrees to call, and the bounded per-window table of
//! distinct endpoints that the collector drains when the window closes.
//!
//! A callback is a request that verve makes on a client's behalf, from inside the network it
//! runs in, so the addresses of that network (loopback, private, link-local and the other
//! ranges of [`refused_range`]) are never called unless an address entry of
//! `--endpoint-allow` (an IP literal or a CIDR range) covers them. A literal is checked when
//! the request arrives ([`canonicalize`]); a host name is checked on every address it
//! resolves to, just before connecting ([`EndpointPolicy::address_allowed`]), so a DNS answer
//! cannot point a call inside. A name entry only lets a name through the allow-list: it never
//! permits the refused addresses it may resolve to.
//!
//! The parts: [`policy`] (the allow-list and the checks an endpoint passes), [`net`] (address
//! ranges and the IPv4 address an IPv6 one stands for), [`table`] (the per-window table),
//! [`outcome`] (what became of a call to an endpoint, and its log line).

pub mod net;
pub mod outcome;
pub mod policy;
pub mod table;

pub use net::{canonical_ip, refused_range};
pub use outcome::{CallError, CallResult, EndpointLine, NotMade};
pub use policy::{canonicalize, check_untrusted, is_loopback_name, EndpointPolicy};
pub use table::{Admit, EndpointTable};

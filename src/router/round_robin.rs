//! Round robin over a server's ready pods (no scheduler plugins enabled), with a sticky
//! session's pod pinned first.

use super::pick::join_addresses;
use super::Server;

impl Server {
    /// Round robin over the ready pods: the next one, followed by the ones after it, `take`
    /// in all (at most every pod once). A `pinned` pod (a session's) goes first instead,
    /// taking the turn only if it is the turn's pod.
    pub(super) fn round_robin(&mut self, take: usize, pinned: Option<u32>) -> String {
        let n = self.endpoints.len().max(1);
        let take = self.endpoints.len().min(take);
        let start = self.round_robin_first(pinned);
        self.take_turn(start);
        join_addresses(&self.endpoints, (0..take).map(|k| (start + k) % n))
    }

    /// Moves the rotation past pod `first` when it is the next turn's.
    pub(super) fn take_turn(&mut self, first: usize) {
        let n = self.endpoints.len().max(1);
        if first == self.next % n {
            self.next = (first + 1) % n;
        }
    }

    /// The pod [`Server::round_robin`] puts first: the `pinned` one (a pod index), else the
    /// next turn's.
    pub(super) fn round_robin_first(&self, pinned: Option<u32>) -> usize {
        let n = self.endpoints.len().max(1);
        pinned
            .map(|p| p as usize)
            .filter(|p| *p < n)
            .unwrap_or(self.next % n)
    }
}

"""What a set of Kubernetes NetworkPolicies lets through, evaluated offline.

The semantics of networking.k8s.io/v1: a pod selected by no policy of a direction is open in
that direction; once selected, a connection passes if any rule of any policy selecting it
matches both the peer and the port. A policy without `policyTypes` is an Ingress policy, and an
Egress one too when it has `egress` rules. A rule without peers matches every peer, without
ports every port. Peers are pods (selected by namespace and pod labels) or, for `ipBlock`,
addresses outside the cluster."""

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["Ingress", "Egress"]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    # Container port names, as a named port in a rule refers to them.
    ports: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Address:
    """A peer outside the cluster."""

    ip: str


Peer = Pod | Address


def namespace_labels(namespace: str) -> dict[str, str]:
    # Every namespace carries its name as a label (Kubernetes 1.21 and later).
    return {"kubernetes.io/metadata.name": namespace}


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector: matchLabels and matchExpressions; empty selects everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _peer_matches(rule_peer: Mapping[str, Any], policy_namespace: str, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if not isinstance(peer, Address):
            return False
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(excluded)
            for excluded in block.get("except", [])
            if ipaddress.ip_network(excluded).version == address.version
        )
    if not isinstance(peer, Pod):
        return False
    if "namespaceSelector" in rule_peer:
        if not selects(rule_peer["namespaceSelector"], namespace_labels(peer.namespace)):
            return False
    elif peer.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    return selects(rule_peer.get("podSelector"), peer.labels)


def _port_matches(
    rule_ports: Sequence[Mapping[str, Any]] | None,
    port: int,
    protocol: str,
    named: Mapping[str, int],
) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        if rule_port.get("protocol", "TCP") != protocol:
            continue
        wanted = rule_port.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if named.get(wanted) == port:
                return True
            continue
        if wanted <= port <= int(rule_port.get("endPort", wanted)):
            return True
    return False


def allows(
    policies: Sequence[Mapping[str, Any]],
    direction: Direction,
    pod: Pod,
    peer: Peer,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `pod` may receive from (Ingress) or open to (Egress) `peer` on `port`."""
    applicable = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == pod.namespace
        and selects(policy["spec"].get("podSelector"), pod.labels)
        and direction in policy_types(policy)
    ]
    if not applicable:
        return True
    # A named port in an ingress rule is the selected pod's; in an egress rule, the peer's.
    named = pod.ports if direction == "Ingress" else (peer.ports if isinstance(peer, Pod) else {})
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applicable:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key) or []
            if peers and not any(
                _peer_matches(p, policy["metadata"]["namespace"], peer) for p in peers
            ):
                continue
            if _port_matches(rule.get("ports"), port, protocol, named):
                return True
    return False

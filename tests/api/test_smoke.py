import httpx
import pytest


@pytest.mark.asyncio
async def test_customer_segment_members_roundtrip(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/customers/c1", json={"email": "A@Example.com", "first_name": "Ada"})
    assert r.status_code == 201, r.text
    assert r.json()["email"] == "a@example.com"
    assert r.json()["email_status"] == "pending"
    r = await api.put("/v1/customers/c1", json={"email_status": "subscribed"})
    assert r.status_code == 200, r.text
    assert r.json()["first_name"] == "Ada"
    r = await api.put(
        "/v1/orders/o1",
        json={"customer_external_id": "c1", "total": "10.50", "placed_at": "2026-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["total"] == "10.50"
    r = await api.post("/v1/segments", json={"name": "VIP"})
    assert r.status_code == 201, r.text
    segment = r.json()
    assert r.headers["location"].endswith(segment["id"])
    r = await api.post(
        f"/v1/segments/{segment['id']}/members", json={"external_ids": ["c1", "nope", "c1"]}
    )
    assert r.json() == {"added": 1, "already_members": 0, "not_found": ["nope"]}, r.text
    r = await api.get(f"/v1/segments/{segment['id']}")
    assert r.json()["member_count"] == 1
    assert r.json()["metrics"]["stale"] is True
    r = await api.get(f"/v1/segments/{segment['id']}/members")
    assert [m["external_id"] for m in r.json()["items"]] == ["c1"]

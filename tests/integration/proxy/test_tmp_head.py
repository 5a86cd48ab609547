from tests.fakes.upstream import json_reply
async def test_head(make_proxy):
    proxy = await make_proxy(allowed_methods=("GET","HEAD","POST"))
    r = await proxy.request("HEAD", "/v1/models")
    print(r.status, dict(r.headers))
    proxy.upstream.script(json_reply(b"", status=204))
    r = await proxy.request("GET", "/v1/models")
    print(r.status, dict(r.headers), await r.read())
    proxy.upstream.script(json_reply(b"", status=304, headers={"ETag": '"x"'}))
    r = await proxy.request("GET", "/v1/models")
    print(r.status, dict(r.headers), await r.read())
    r = await proxy.request("GET", "/v1/models")
    print(r.status, len(await r.read()))
    print([x.method for x in proxy.upstream.requests])

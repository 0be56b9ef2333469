#!/usr/bin/env python3
"""Writes the sample events in this folder, signed with the sample secrets below.

Run it again after changing a sample: `python3 events/generate.py`. The secrets are the
ones the README's commands and tests export; never use them for a real deployment.
"""
import base64, hashlib, hmac, json, pathlib, urllib.parse

GITHUB_SECRET = "sample-github-secret"
SLACK_SECRET = "sample-slack-signing-secret"
HERE = pathlib.Path(__file__).parent

def user(login, uid):
    u = f"https://api.github.com/users/{login}"
    return {"login": login, "id": uid, "node_id": "MDQ6VXNlcjE=", "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "gravatar_id": "", "url": u, "html_url": f"https://github.com/{login}", "followers_url": u + "/followers",
            "following_url": u + "/following{/other_user}", "gists_url": u + "/gists{/gist_id}", "starred_url": u + "/starred{/owner}{/repo}",
            "subscriptions_url": u + "/subscriptions", "organizations_url": u + "/orgs", "repos_url": u + "/repos",
            "events_url": u + "/events{/privacy}", "received_events_url": u + "/received_events", "type": "User",
            "user_view_type": "public", "site_admin": False}

def repository(full_name="acme/hello"):
    owner, name = full_name.split("/")
    a = f"https://api.github.com/repos/{full_name}"
    r = {"id": 812345678, "node_id": "R_kgDOMG8Xzg", "name": name, "full_name": full_name, "private": True,
         "owner": dict(user(owner, 9919), name=owner, email=None, type="Organization"),
         "html_url": f"https://github.com/{full_name}", "description": "Hello service", "fork": False, "url": f"https://github.com/{full_name}"}
    for k in ["forks", "keys", "collaborators", "teams", "hooks", "issue_events", "events", "assignees", "branches", "tags", "blobs",
              "git_tags", "git_refs", "trees", "statuses", "languages", "stargazers", "contributors", "subscribers", "subscription",
              "commits", "git_commits", "comments", "issue_comment", "contents", "compare", "merges", "archive", "downloads", "issues",
              "pulls", "milestones", "notifications", "labels", "releases", "deployments"]:
        r[f"{k}_url"] = f"{a}/{k}{{/id}}"
    r.update({"created_at": 1717000000, "updated_at": "2026-11-20T10:00:00Z", "pushed_at": 1795460000,
              "git_url": f"git://github.com/{full_name}.git", "ssh_url": f"git@github.com:{full_name}.git",
              "clone_url": f"https://github.com/{full_name}.git", "svn_url": f"https://github.com/{full_name}", "homepage": None,
              "size": 412, "stargazers_count": 3, "watchers_count": 3, "language": "Python", "has_issues": True, "has_projects": False,
              "has_downloads": True, "has_wiki": False, "has_pages": False, "has_discussions": False, "forks_count": 0,
              "mirror_url": None, "archived": False, "disabled": False, "open_issues_count": 2, "license": None,
              "allow_forking": False, "is_template": False, "web_commit_signoff_required": False, "topics": ["service"],
              "visibility": "private", "forks": 0, "open_issues": 2, "watchers": 3, "default_branch": "main", "stargazers": 3,
              "master_branch": "main", "organization": owner, "custom_properties": {}})
    return r

def push(ref, created=True, deleted=False, full_name="acme/hello"):
    sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    commit = {"id": sha, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": True,
              "message": "Release 1.0.0\n\nChangelog: first release of hello-app.", "timestamp": "2026-11-23T18:59:50Z",
              "url": f"https://github.com/{full_name}/commit/{sha}",
              "author": {"name": "Octo Cat", "email": "octocat@example.com", "username": "octocat"},
              "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
              "added": [], "removed": [], "modified": ["hello_app/__init__.py", "pyproject.toml", "CHANGELOG.md"]}
    return {"ref": ref, "before": "0" * 40 if created else sha, "after": "0" * 40 if deleted else sha, "repository": repository(full_name),
            "pusher": {"name": "octocat", "email": "octocat@example.com"}, "organization": user("acme", 9919),
            "sender": user("octocat", 583231), "created": created, "deleted": deleted, "forced": False, "base_ref": None,
            "compare": f"https://github.com/{full_name}/compare/{ref}", "commits": [] if ref.startswith("refs/tags/") else [commit],
            "head_commit": None if deleted else commit}

def release(tag):
    return {"action": "published", "release": {"url": "https://api.github.com/repos/acme/hello/releases/1", "id": 1, "tag_name": tag,
            "target_commitish": "main", "name": tag, "draft": False, "prerelease": False, "created_at": "2026-11-23T19:00:00Z",
            "published_at": "2026-11-23T19:00:05Z", "author": user("octocat", 583231), "assets": [], "body": "Bug fixes."},
            "repository": repository(), "organization": user("acme", 9919), "sender": user("octocat", 583231)}

def apigw(path, headers, body, epoch_ms=1795460400000):
    return {"version": "2.0", "routeKey": f"POST {path}", "rawPath": path, "rawQueryString": "", "headers": headers,
            "requestContext": {"accountId": "123456789012", "apiId": "a1b2c3d4e5", "domainName": "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com",
                               "domainPrefix": "a1b2c3d4e5", "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                               "sourceIp": "140.82.115.1", "userAgent": headers.get("user-agent", "")}, "requestId": "Yc1pGhK9DoEEMqQ=",
                               "routeKey": f"POST {path}", "stage": "$default", "time": "23/Nov/2026:19:00:00 +0000", "timeEpoch": epoch_ms},
            "body": body, "isBase64Encoded": False}

def page_get(path):
    """A browser's GET past the HTTP API's JWT authorizer, which adds the token's claims."""
    event = apigw(path, {"accept": "text/html", "user-agent": "Mozilla/5.0",
                         "authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.sample.signature"}, None)
    event["routeKey"] = event["requestContext"]["routeKey"] = f"GET {path}"
    event["requestContext"]["http"]["method"] = "GET"
    event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": "00u1a2b3c4", "aud": "shipit-page",
                                                                "iss": "https://sso.example.com"}, "scopes": None}}
    del event["body"]
    return event

def github(event, payload, delivery):
    body = json.dumps(payload, indent=2)
    sig = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    return apigw("/hooks/github", {"content-type": "application/json", "user-agent": "GitHub-Hookshot/a1b2c3d", "x-github-event": event,
                 "x-github-delivery": delivery, "x-github-hook-id": "512345678", "x-hub-signature-256": sig}, body)

def slack(text, ts=1795460400):
    form = urllib.parse.urlencode({"token": "gIkuvaNzQIHg97ATvDxqgjtO", "team_id": "T1DC2JH3J", "team_domain": "acme",
            "channel_id": "C2147483705", "channel_name": "deploys", "user_id": "U2CERLKJA", "user_name": "roadrunner",
            "command": "/deploy", "text": text, "api_app_id": "A123456", "is_enterprise_install": "false",
            "response_url": "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN",
            "trigger_id": "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"})
    sig = "v0=" + hmac.new(SLACK_SECRET.encode(), f"v0:{ts}:{form}".encode(), hashlib.sha256).hexdigest()
    return apigw("/hooks/slack", {"content-type": "application/x-www-form-urlencoded", "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
                 "x-slack-request-timestamp": str(ts), "x-slack-signature": sig}, form, ts * 1000)

def s3(key):
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1", "eventTime": "2026-11-23T19:00:00.000Z",
            "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "AWS:AROAEXAMPLE:ci-publisher"},
            "requestParameters": {"sourceIPAddress": "10.0.12.34"}, "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "shipit-package-upload", "bucket": {"name": "acme-pypi",
            "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": "arn:aws:s3:::acme-pypi"},
            "object": {"key": key, "size": 5321, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0A1B2C3D4E5F678901"}}}]}

def codeartifact(name, version):
    return {"version": "0", "id": "73f03fec-a137-971e-6ac6-07c8ffffffff", "detail-type": "CodeArtifact Package Version State Change",
            "source": "aws.codeartifact", "account": "123456789012", "time": "2026-11-23T19:00:00Z", "region": "eu-west-1",
            "resources": ["arn:aws:codeartifact:eu-west-1:123456789012:package/acme/internal/pypi//" + name],
            "detail": {"domainOwner": "123456789012", "domainName": "acme", "repositoryName": "internal", "packageFormat": "pypi",
                       "packageNamespace": None, "packageName": name, "packageVersion": version, "packageVersionState": "Published",
                       "packageVersionRevision": "Ciqv0TEF3oGb2mT6OeWmRb9rxrhRPe8WCtNb5eVPRao=", "changes": {"assetsAdded": 2,
                       "assetsRemoved": 0, "metadataUpdated": True, "assetsUpdated": 0, "statusChanged": True}, "operationType": "Created",
                       "sequenceNumber": 1, "eventDeduplicationId": "2mMhvIpgD1CvGzFO1eq0nJiZmBbWjTZLbOwy/r3yYVg="}}

def ec2_running(instance):
    return {"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602", "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2", "account": "123456789012", "time": "2026-11-23T19:00:00Z", "region": "eu-west-1",
            "resources": [f"arn:aws:ec2:eu-west-1:123456789012:instance/{instance}"],
            "detail": {"instance-id": instance, "state": "running"}}

# A deploy job as the ingress functions queue it (the tag push above, on production).
JOB = {"schema": 1, "id": "5d2c9e0a41b7f3c86e12", "app": "hello", "env": "production", "version": "1.0.0",
       "package": "hello-app", "source": {"kind": "tag", "event": "push", "repo": "acme/hello", "tag": "v1.0.0",
       "commit": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "delivery": "3f6e1a80-c8a1-11f0-8a5f-2f1e0b7c9d01",
       "pusher": "octocat"}, "requested_by": "octocat (tag v1.0.0)", "requested_at": "2026-11-20T10:00:00Z"}

def sqs(job):
    return {"Records": [{"messageId": "0f5d3c1e-8b2a-4c6f-9e7d-1a2b3c4d5e6f", "receiptHandle": "AQEBz1sample",
                         "body": json.dumps(job), "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795460000000",
                         "SequenceNumber": "18889999999999999999", "MessageGroupId": f"{job['app']}/{job['env']}",
                         "SenderId": "AROAEXAMPLE:github-webhook", "MessageDeduplicationId": job["id"],
                         "ApproximateFirstReceiveTimestamp": "1795460000100"}, "messageAttributes": {},
                         "md5OfBody": hashlib.md5(json.dumps(job).encode()).hexdigest(), "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:shipit-deploys.fifo", "awsRegion": "us-east-1"}]}

SAMPLES = {
    "deploy-dispatch-sqs.json": sqs(JOB),
    # What the state machine passes deploy-step first: the job alone.
    "deploy-step-start.json": {"job": JOB},
    "github-tag-push.json": github("push", push("refs/tags/v1.0.0"), "3f6e1a80-c8a1-11f0-8a5f-2f1e0b7c9d01"),
    "github-release.json": github("release", release("v1.1.0"), "4a7f2b90-c8a1-11f0-9b6a-3a2f1c8d0e12"),
    "github-ping.json": github("ping", {"zen": "Design for failure.", "hook_id": 512345678, "repository": repository(),
                                        "sender": user("octocat", 583231)}, "1c2d3e40-c8a1-11f0-8e3b-1d0c9a6b8f00"),
    "github-branch-push.json": github("push", push("refs/heads/main", created=False), "5b803ca0-c8a1-11f0-8c7b-4b3f2d9e1f23"),
    "github-tag-delete.json": github("push", push("refs/tags/v1.0.0", created=False, deleted=True), "6c914db0-c8a1-11f0-9d8c-5c4e3eaf2034"),
    "slack-deploy.json": slack("hello 1.1.0"),
    "s3-wheel-upload.json": s3("simple/hello-app/hello_app-1.1.0-py3-none-any.whl"),
    "codeartifact-published.json": codeartifact("hello-app", "1.1.0"),
    "ec2-instance-running.json": ec2_running("i-0a1b2c3d4e5f60718"),
    "page-get.json": page_get("/"),
}

if __name__ == "__main__":
    for name, event in SAMPLES.items():
        (HERE / name).write_text(json.dumps(event, indent=2) + "\n")
        print("wrote", HERE / name)

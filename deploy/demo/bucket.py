"""Demo helper (runs in moto's virtualenv, which has boto3): create the demo's public bucket,
or check that it is private now. Usage: bucket.py create|check ENDPOINT BUCKET"""
import json
import sys

import boto3

PUBLIC_URIS = {
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
}

command, endpoint, bucket = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")

if command == "create":
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.delete_public_access_block(Bucket=bucket)
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
             "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Sid": "AccountAdmin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
             "Action": "s3:*", "Resource": f"arn:aws:s3:::{bucket}"},
        ],
    }))
    print(f"created public bucket {bucket}: ACL public-read, policy with a public statement, no public-access block")
elif command == "check":
    problems = []
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        if not all(block.values()):
            problems.append(f"public-access block incomplete: {block}")
    except s3.exceptions.ClientError as err:
        problems.append(f"no public-access block ({err.response['Error']['Code']})")
    grants = s3.get_bucket_acl(Bucket=bucket)["Grants"]
    if any(g.get("Grantee", {}).get("URI") in PUBLIC_URIS for g in grants):
        problems.append("ACL still grants a public group")
    kept = []
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        kept = [s.get("Sid") for s in policy.get("Statement", [])]
        if any(s.get("Principal") in ("*", {"AWS": "*"}) for s in policy.get("Statement", [])):
            problems.append("policy still has a public statement")
    except s3.exceptions.ClientError:
        pass
    if problems:
        print(f"bucket {bucket} is NOT private: " + "; ".join(problems))
        sys.exit(1)
    print(f"verified on moto: bucket {bucket} is private (public-access block on, ACL private, "
          f"policy keeps {kept})")
else:
    sys.exit(f"unknown command {command}")

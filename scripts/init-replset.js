// Initiates Lucid's three-member replica set `rs0` (configs/mongod.conf on every member).
// Run once, on one member, before authorization is enforced or through the localhost
// exception:   mongosh --host lucid-db-1.lan --file scripts/init-replset.js
// Edit `members` first. Running it again on an initiated set changes nothing.
//
// Then create the user lucid-db logs in as (the password goes into the credential store,
// see docs/systemd.md, never into a file in git):
//   use admin
//   db.createUser({user: "lucid", pwd: passwordPrompt(),
//                  roles: [{role: "readWrite", db: "lucid"}, {role: "dbAdmin", db: "lucid"},
//                          {role: "clusterMonitor", db: "admin"}]})
// and point lucid-db at every member:
//   mongodb.url = "mongodb://lucid@lucid-db-1.lan:27017,lucid-db-2.lan:27017,lucid-db-3.lan:27017/?replicaSet=rs0&authSource=admin"

const members = [
  { _id: 0, host: "lucid-db-1.lan:27017", priority: 2 },
  { _id: 1, host: "lucid-db-2.lan:27017", priority: 1 },
  { _id: 2, host: "lucid-db-3.lan:27017", priority: 1 },
];

function initiated() {
  try {
    return rs.status().ok === 1;
  } catch (e) {
    // NotYetInitialized (94) is the only answer that means "go ahead".
    if (e.code === 94) return false;
    throw e;
  }
}

if (initiated()) {
  print("rs0 is already initiated; nothing to do");
} else {
  const res = rs.initiate({
    _id: "rs0",
    // Majority writes survive the loss of one Pi.
    writeConcernMajorityJournalDefault: true,
    members: members,
  });
  if (res.ok !== 1) {
    throw new Error("rs.initiate failed: " + tojson(res));
  }
  // Wait (up to a minute) for an election, so the next step can write.
  const until = Date.now() + 60 * 1000;
  while (!db.hello().isWritablePrimary && Date.now() < until) {
    sleep(500);
  }
  print(db.hello().isWritablePrimary ? "rs0 initiated; this member is primary"
                                     : "rs0 initiated; no primary yet, check rs.status()");
}

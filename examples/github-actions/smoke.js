// The production smoke test the example workflow runs after a deploy (k6; BASE_URL is the app's
// public address). A failed check or a slow answer fails the thresholds, and k6 exits non-zero.
import http from "k6/http";
import { check } from "k6";

export const options = {
  vus: 5,
  duration: "30s",
  thresholds: {
    checks: ["rate==1.0"],
    http_req_failed: ["rate==0"],
    http_req_duration: ["p(95)<500"],
  },
};

export default function () {
  const health = http.get(`${__ENV.BASE_URL}/health`);
  check(health, { "health answers 200": (r) => r.status === 200 });
  const home = http.get(`${__ENV.BASE_URL}/`);
  check(home, { "home page answers 200": (r) => r.status === 200 });
}

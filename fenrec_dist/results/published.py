"""Published test numbers (full ranking, leave-one-out) that the results table sets beside ours.

From ../shared/docs/FENREC.md: the strongest published baseline per dataset. FENRec's paper
gives no per-dataset figures there, only an average improvement of 6.16% over the best
baseline, so no FENRec row is listed. Toys has no entry: FENREC.md lists no Toys numbers
(add ICSRec's from its paper when checked against it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    model: str
    source: str
    metrics: dict[str, float]


PUBLISHED: dict[str, Published] = {
    "beauty": Published("ICSRec", "ICSRec (WSDM 2024), via FENREC.md",
                        {"HR@5": 0.0698, "HR@20": 0.1298, "NDCG@5": 0.0494, "NDCG@20": 0.0663}),
    "sports": Published("ICSRec", "ICSRec (WSDM 2024), via FENREC.md",
                        {"HR@5": 0.0403, "HR@20": 0.0794, "NDCG@5": 0.0283, "NDCG@20": 0.0393}),
    "yelp": Published("ICLRec", "ICLRec (WWW 2022), via FENREC.md",
                      {"HR@5": 0.0240, "HR@20": 0.0659, "NDCG@5": 0.0153, "NDCG@20": 0.0270}),
}

#: FENRec's claimed average improvement over the best baseline (percent).
FENREC_CLAIMED_GAIN_PCT = 6.16

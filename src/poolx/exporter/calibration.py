"""Built-in calibration texts for int8 export: what the activation ranges are measured on. They are deliberately
different from `texts.VERIFY_TEXTS`, so `poolx verify` judges an int8 graph on text it was not tuned on. Users
with a domain corpus pass their own (`poolx export --precision int8 --calibration FILE`)."""

from __future__ import annotations

_PARAGRAPH = (
    "The committee reviewed the quarterly figures and found that revenue had grown by eleven percent, mostly "
    "because of higher subscription renewals in Europe, while operating costs stayed flat. Several members asked "
    "whether the growth would last once the promotional discounts ended, and the finance team promised a "
    "detailed forecast before the next meeting, including a scenario in which the exchange rate moves against us. "
)

CALIBRATION_TEXTS: tuple[str, ...] = (
    "What is the fastest way to embed ten million support tickets overnight?",
    "The battery lasts two days, but the charger gets hot and the cable is too short.",
    "Customer reports that the app crashes when uploading photos larger than 20 MB on Android 14.",
    "Preheat the oven to 200 degrees, then roast the vegetables for about forty minutes.",
    "The patient presented with a persistent dry cough, mild fever and fatigue lasting two weeks.",
    "Section 4.2: the licensee shall not sublicense, sell or distribute the software without written consent.",
    "def mean_pool(h, mask):\n    m = mask.unsqueeze(-1).float()\n    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)",
    "SELECT user_id, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY user_id;",
    "Error: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity).",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The central bank left interest rates unchanged and signalled two cuts later in the year.",
    "Our team won the match 3-1 after a late goal from the substitute striker.",
    "lol that was the best concert ever, can't believe they played the whole album!!",
    "Please reset my password; I no longer have access to the email on file.",
    "The mitochondria is the powerhouse of the cell.",
    "Transformers compute attention over all pairs of tokens, so cost grows with the square of the length.",
    "Il pleut depuis ce matin, alors nous avons annulé la promenade en forêt.",
    "Wir treffen uns morgen um neun Uhr vor dem Bahnhof, bitte sei pünktlich.",
    "El informe anual muestra un aumento de las ventas en América Latina.",
    "Мы обсудили план работ на следующую неделю и распределили задачи.",
    "今天的会议讨论了新产品的发布时间和市场策略。",
    "新しいモデルは以前より速く、精度も高いと評価されています。",
    "이 제품은 배송이 빠르고 품질도 좋아서 만족합니다.",
    "تمت الموافقة على المشروع الجديد في اجتماع مجلس الإدارة أمس.",
    "यह पुस्तक बच्चों के लिए बहुत उपयोगी और रोचक है।",
    "Η θάλασσα ήταν ήρεμη και ο ουρανός καθαρός όλη την ημέρα.",
    "Proszę o przesłanie faktury na adres firmy do końca miesiąca.",
    "Bu akşam yemekte balık ve salata var.",
    "Short.",
    "OK",
    "Q3 revenue: $4.2M (+11% YoY); churn 2.1%; NPS 47.",
    "https://example.com/docs/api/v2/embeddings?model=minilm&normalize=true",
    "The court held that the contract was void because one party lacked the capacity to agree to its terms.",
    "Gradient descent updates each parameter in the direction that most reduces the loss on the current batch.",
    "Rain is expected across the north on Tuesday, with snow on higher ground and strong winds near the coast.",
    "She opened the old letter slowly, afraid of what her grandmother might have written decades ago.",
    "Install the package, export the model, verify the graph, and only then deploy it behind the load balancer.",
    "Refund requested: item arrived damaged, box crushed, screen cracked in the lower left corner.",
    "🙂👍 great service, will order again",
    "The ratio of the circumference of a circle to its diameter is approximately 3.14159.",
    _PARAGRAPH,
    _PARAGRAPH * 3,
    "Le comité a examiné les résultats trimestriels et constaté une croissance des revenus de onze pour cent. " * 6,
    "Der Bericht beschreibt ausführlich, wie die neue Anlage gebaut, geprüft und in Betrieb genommen wurde. " * 8,
    "数据管道每天处理数百万条记录，并将结果写入数据仓库，供分析团队使用。" * 10,
    ("A sorting algorithm puts elements of a list into an order. The most frequently used orders are numerical "
     "order and lexicographical order, and either ascending or descending. Efficient sorting is important for "
     "optimizing the efficiency of other algorithms, such as search and merge algorithms, that require input "
     "data to be in sorted lists. ") * 4,
)

STATIC_EXTRA_TEXTS = 256  # corpus texts added for static int8 (NNCF's default calibration subset is 300 samples)


def static_calibration_texts() -> list[str]:
    """The default calibration texts of int8 for OpenVINO: the built-in ones and the last 256 texts of the packaged
    corpus (documentation chunks, 5-300 tokens). Static quantization fixes each activation's range from these,
    so it needs more of them than the dynamic int8 graph, whose ranges are measured per batch at run time: with the
    built-in 46 alone NNCF's graph of all-MiniLM-L6-v2 reached min cosine 0.990 on 300 corpus texts, with 256 corpus
    texts 0.995 (benchmarks/RESULTS.md, issue 13). The last texts, so that benchmarks on the first N do not time
    texts the graph was calibrated on (unless N is the whole corpus)."""
    from poolx.data import packaged_corpus

    return list(CALIBRATION_TEXTS) + packaged_corpus()[-STATIC_EXTRA_TEXTS:]

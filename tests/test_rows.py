"""`longshort.data.rows`: one loader for JSONL, Parquet and `datasets` folders, with a field mapping and TRL chat
rows, on real files written here; and stage entry points (traces, sft, rl, eval, `data benchmark`) reading them."""

from __future__ import annotations

import json

import pytest

from longshort.config import load_recipe
from longshort.data.rows import chat_fields, read_rows
from longshort.errors import ConfigError, DataError, UserError
from longshort.io import Rejects

# A public trace set's own column names (OpenMath style), not ours.
THEIRS = [
    {"question": "What is 2 + 3?", "expected_answer": "5", "generation": "<think>\n2 + 3 = 5\n</think>\n\\boxed{5}"},
    {"question": "What is 4 * 2?", "expected_answer": "8", "generation": "<think>\n4 * 2 = 8\n</think>\n\\boxed{8}"},
]
MAPPING = {"problem": "question", "answer": "expected_answer", "response": "generation"}


def chat(problem: str, response: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": problem},
            {"role": "assistant", "content": response}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_dataset(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def save_dataset_dict(path, splits):
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


# ---- formats ------------------------------------------------------------------------------------------------


def test_the_three_formats_give_the_same_rows(tmp_path):
    files = [write_jsonl(tmp_path / "t.jsonl", THEIRS), write_jsonl(tmp_path / "t.json", THEIRS),
             write_parquet(tmp_path / "t.parquet", THEIRS), save_dataset(tmp_path / "ds", THEIRS)]
    for f in files:
        rows = read_rows(f)
        assert [row for _, row in rows] == THEIRS, f
        assert [n for n, _ in rows] == [1, 2]
    assert read_rows(files[0]).where(2) == f"{files[0]}:2"
    assert read_rows(files[2]).where(2) == f"{files[2]}:row 2"
    assert read_rows(files[3]).where(1) == f"{files[3]}:row 1"
    assert [read_rows(f).name for f in files] == ["t", "t", "t", "ds"]


def test_a_parquet_file_is_read_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(2500)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=700)
    got = list(read_rows(tmp_path / "big.parquet"))
    assert [n for n, _ in got] == list(range(1, 2501)) and [r for _, r in got] == rows


def test_a_dataset_dict_folder_reads_the_named_split(tmp_path):
    folder = save_dataset_dict(tmp_path / "dd", {"train": THEIRS[:1], "test": THEIRS[1:]})
    assert [r for _, r in read_rows(folder)] == THEIRS[:1]  # no split named: train
    test = read_rows(folder, split="test")
    assert [r for _, r in test] == THEIRS[1:]
    assert test.where(1) == f"{folder / 'test'}:row 1" and test.name == "dd-test"
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits (train, test|test, train), none named 'validation'") as e:
        read_rows(folder, split="validation")
    assert "\n" not in str(e.value)
    only_test = save_dataset_dict(tmp_path / "dd2", {"test": THEIRS})
    with pytest.raises(DataError, match=r"splits test, none named 'train'"):
        read_rows(only_test)


def test_a_datasets_folder_saved_with_a_format_still_gives_python_values(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"problem": "p", "answer": 3}])
    ds.set_format("numpy")
    ds.save_to_disk(str(tmp_path / "np"))
    assert [r for _, r in read_rows(tmp_path / "np")] == [{"problem": "p", "answer": 3}]
    assert type(next(iter(read_rows(tmp_path / "np")))[1]["answer"]) is int


# ---- field mapping and chat rows ---------------------------------------------------------------------------


def test_field_mapping_copies_columns_to_our_names(tmp_path):
    for f in (write_jsonl(tmp_path / "t.jsonl", THEIRS), write_parquet(tmp_path / "t.parquet", THEIRS),
              save_dataset(tmp_path / "ds", THEIRS)):
        (_, first), _ = list(read_rows(f, fields=MAPPING))
        assert first["problem"] == "What is 2 + 3?" and first["answer"] == "5" and first["response"].startswith("<think>")
        assert first["question"] == "What is 2 + 3?"  # the row's own columns stay


def test_field_mapping_from_the_recipe(tmp_path):
    recipe = load_recipe(None, ["data.fields.problem=question", "data.fields.answer=expected_answer"])
    assert recipe.data.fields.mapping() == {"problem": "question", "answer": "expected_answer"}
    assert recipe.data.resume_keys() == ("data.fields.problem", "data.fields.answer")
    assert load_recipe(None, []).data.resume_keys() == ()  # a run recorded before these keys still resumes
    (_, row), _ = list(read_rows(write_parquet(tmp_path / "t.parquet", THEIRS), fields=recipe.data.fields))
    assert row["problem"] == "What is 2 + 3?" and row["answer"] == "5"
    with pytest.raises(ConfigError, match=r"data\.fields\.nope"):
        load_recipe(None, ["data.fields.nope=x"])
    with pytest.raises(ConfigError, match=r"key 'data\.fields\.problem' must name a column"):
        load_recipe(None, ["data.fields.problem=' '"])
    with pytest.raises(UserError, match="unknown field 'question'"):
        read_rows(tmp_path / "t.parquet", fields={"question": "problem"})


def test_trl_messages_rows(tmp_path):
    rows = [{"messages": chat(r["question"], r["generation"])} for r in THEIRS]
    for f in (write_jsonl(tmp_path / "m.jsonl", rows), write_parquet(tmp_path / "m.parquet", rows),
              save_dataset(tmp_path / "m", rows)):
        got = [r for _, r in read_rows(f)]
        assert [(r["problem"], r["response"]) for r in got] == [(r["question"], r["generation"]) for r in THEIRS]
    # the last assistant message is the response; content parts are joined; a prompt-only chat gives the problem
    assert chat_fields([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]) == {"problem": "ab", "response": "y"}
    assert chat_fields([{"role": "user", "content": "q"}]) == {"problem": "q"}
    # the row's own fields win; another column can hold the chat
    own = {"problem": "mine", "conversation": chat("theirs", "r")}
    (_, row), = read_rows(write_jsonl(tmp_path / "own.jsonl", [own]), fields={"messages": "conversation"})
    assert row["problem"] == "mine" and row["response"] == "r"


@pytest.mark.parametrize("messages,reason", [
    ([], "field 'messages' must be a non-empty list"),
    ("hi", "field 'messages' must be a non-empty list"),
    ([{"role": "user"}], r"messages\[0\]\.content must be a string"),
    ([{"content": "x"}], r"messages\[0\] must be a \{role, content\} message"),
    ([{"role": "tool", "content": "x"}], r"messages\[0\]\.role 'tool'"),
    ([{"role": "assistant", "content": "x"}], "field .messages. has 0 user messages"),
    (chat("a", "b") + chat("c", "d"), "field .messages. has 2 user messages"),
])
def test_bad_chat_rows_name_the_line(tmp_path, messages, reason):
    f = write_jsonl(tmp_path / "m.jsonl", [{"messages": chat("q", "r")}, {"messages": messages}])
    with pytest.raises(DataError, match=rf"m\.jsonl:2: {reason}"):
        list(read_rows(f))


# ---- bad input ------------------------------------------------------------------------------------------------


def test_a_parquet_file_missing_the_mapped_field(tmp_path):
    f = write_parquet(tmp_path / "t.parquet", [{"q": "p", "answer": "1"}])
    with pytest.raises(DataError) as e:
        list(read_rows(f, fields={"problem": "question"}))
    assert str(e.value) == f"{f}:row 1: missing field 'question' (data.fields.problem)"
    rejects = Rejects()
    assert list(read_rows(f, fields={"problem": "question"}, on_error="skip", rejects=rejects)) == []
    assert rejects.rows == [{"where": f"{f}:row 1", "reason": "missing field 'question' (data.fields.problem)"}]
    # rows in our own schema (what longshort writes: traces, problems, transcripts) keep theirs, so a recipe's
    # mapping does not break the stages that read them
    ours = [{"id": "a", "problem": "p", "gold": "1", "turns": [{"role": "long", "text": "t"}]}]
    mapping = {"id": "uid", "problem": "question", "answer": "expected_answer", "response": "generation", "messages": "chat"}
    assert [r for _, r in read_rows(write_parquet(tmp_path / "ours.parquet", ours), fields=mapping)] == ours


def test_paths_that_are_not_row_files(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("problem,answer\np,1\n")
    with pytest.raises(DataError) as e:
        read_rows(csv)
    assert str(e.value).startswith(f"{csv}: unknown format '.csv'") and "\n" not in str(e.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: a directory, but not a `datasets` folder"):
        read_rows(tmp_path / "plain")
    with pytest.raises(DataError, match=r"missing\.parquet: file not found"):
        read_rows(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file") as e:
        list(read_rows(junk))
    assert "\n" not in str(e.value)
    bad_jsonl = tmp_path / "b.jsonl"
    bad_jsonl.write_bytes(b'{"problem": "p"}\n{nope\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        list(read_rows(bad_jsonl))


# ---- stages ------------------------------------------------------------------------------------------------------


def test_traces_from_a_mapped_parquet_file_and_a_chat_dataset(tmp_path):
    from longshort.data.traces import read_traces

    traces = read_traces(write_parquet(tmp_path / "t.parquet", THEIRS), fields=MAPPING)
    assert [(t.id, t.answer) for t in traces] == [("t-1", "5"), ("t-2", "8")]
    chats = save_dataset_dict(tmp_path / "dd", {"train": [{"messages": chat(r["question"], r["generation"]),
                                                           "answer": r["expected_answer"]} for r in THEIRS]})
    traces = read_traces(chats)
    assert [(t.id, t.problem, t.answer) for t in traces] == [("dd-train-1", "What is 2 + 3?", "5"), ("dd-train-2", "What is 4 * 2?", "8")]
    dup = write_parquet(tmp_path / "dup.parquet", [{**THEIRS[0], "id": 7}, {**THEIRS[1], "id": 7}])
    with pytest.raises(DataError, match=r"dup\.parquet:row 2: duplicate id '7' \(first at row 1\)"):
        read_traces(dup, fields=MAPPING)


def test_sft_examples_from_a_parquet_file_of_chat_rows(tmp_path, tiny_tokenizer):
    from longshort.sft.data import load_examples

    rows = [{"messages": chat(r["question"], r["generation"])} for r in THEIRS]
    f = write_parquet(tmp_path / "chats.parquet", rows)
    examples, counts, rejects = load_examples(f, tiny_tokenizer, "long", "sys", 512)
    assert [e.id for e in examples] == ["chats-1", "chats-2"] and counts["rows"] == 2 and not rejects
    own = [t for t, m in zip(examples[0].input_ids, examples[0].mask) if m]
    assert tiny_tokenizer.decode(own) == THEIRS[0]["generation"] + "<|im_end|>"  # no stop strings: the role's own eos
    mapped, _, _ = load_examples(write_parquet(tmp_path / "t.parquet", THEIRS), tiny_tokenizer, "long", "sys", 512, fields=MAPPING)
    assert [e.input_ids for e in mapped] == [e.input_ids for e in examples]
    with pytest.raises(DataError, match=r"t\.parquet:row 1: missing field 'answer_text' \(data\.fields\.response\)"):
        load_examples(tmp_path / "t.parquet", tiny_tokenizer, "long", "sys", 512, fields={"response": "answer_text"})


def test_rl_problems_from_a_datasets_folder(tmp_path):
    from longshort.rl.batches import load_problems

    folder = save_dataset(tmp_path / "ds", [{"question": "1+1?", "gold": 2}, {"question": "2+2?", "gold": 4}])
    recipe = load_recipe(None, [f"data.train={folder}", "data.fields.answer=gold"])
    assert load_problems(recipe) == [{"id": "1", "problem": "1+1?", "answer": "2"}, {"id": "2", "problem": "2+2?", "answer": "4"}]


def test_eval_loads_a_benchmark_of_any_name_from_a_parquet_path(tmp_path):
    from longshort.eval import load_benchmarks

    f = write_parquet(tmp_path / "mine.parquet", [{"q": "What is 2 + 3?", "gold": 5.0}, {"q": "What is 4 * 2?", "gold": 8.0}])
    recipe = load_recipe(None, [f"evaluation.path={f}", "evaluation.benchmarks=[my_bench]",
                                "data.fields.problem=q", "data.fields.answer=gold"])
    (bench,) = load_benchmarks(recipe)
    assert bench.name == "my_bench" and bench.origin == str(f)
    assert bench.rows == [{"id": "my_bench-0", "problem": "What is 2 + 3?", "answer": "5", "source": "my_bench"},
                          {"id": "my_bench-1", "problem": "What is 4 * 2?", "answer": "8", "source": "my_bench"}]
    # a known name keeps its own rules; an unknown one needs a path; a name must be usable as a file name
    from longshort.data.benchmarks import load_benchmark

    with pytest.raises(UserError, match=r"unknown benchmark 'my_bench'.*--path"):
        load_benchmark("my_bench")
    with pytest.raises(UserError, match=r"benchmark name '\.\./x'"):
        load_benchmark("../x", path=f)
    dd = save_dataset_dict(tmp_path / "dd", {"train": [{"problem": "a", "answer": "1"}], "test": [{"problem": "b", "answer": "2"}]})
    assert [r["problem"] for r in load_benchmark("mine", path=dd).rows] == ["b"]  # a benchmark's split: test
    assert [r["problem"] for r in load_benchmark("mine", path=dd, split="train").rows] == ["a"]


def test_data_benchmark_command_on_a_parquet_file(tmp_path, capsys):
    from longshort.cli import main

    f = write_parquet(tmp_path / "b.parquet", [{"problem": "1+1?", "answer": "2"}, {"problem": "x", "answer": "\\boxed{"}])
    out = tmp_path / "out.jsonl"
    assert main(["data", "benchmark", "homework", "--path", str(f), "--on-error", "skip", "--out", str(out)]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["homework-0"]
    assert json.loads((tmp_path / "rejects.jsonl").read_text())["where"] == f"{f}:row 2"
    assert main(["data", "benchmark", "homework", "--path", str(f), "--out", str(out)]) == 2
    assert f"{f}:row 2: field 'answer'" in capsys.readouterr().err

# Beyond the matrix: the MPI latency/bandwidth sweep, the cost model calibrated on it and on the
# single-rank cells, and the optional Hugging Face baseline. All feed the report. The two
# measurements hold the `bench` resource, so they never run beside a benchmark.


rule commbench:
    input:
        code="pipeline/study/commbench.py",
    output:
        "results/comm.json",
    params:
        timeout=get_timeout_prefix(),
    resources:
        mpi=MPI_LAUNCHER,
        tasks=2,
        bench=1,
    log:
        "results/logs/commbench.log",
    benchmark:
        "results/logs/benchmarks/commbench.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} {resources.mpi} -n {resources.tasks}"
        " python -m mpi4py -m pipeline commbench --out {output} > {log} 2>&1"


rule costmodel:
    input:
        runs=get_run_files(),
        comm="results/comm.json",
        code="pipeline/study/costmodel.py",
    output:
        "results/costmodel.json",
    params:
        cluster=get_cluster_args(),
        ranks=config["cluster"]["predict_ranks"],
        lengths=config["cluster"]["predict_prompt_lengths"],
    log:
        "results/logs/costmodel.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline costmodel --runs {input.runs} --comm {input.comm} {params.cluster}"
        " --ranks {params.ranks} --prompt-lens {params.lengths} --out {output} > {log} 2>&1"


rule baseline:
    input:
        checkpoint=get_checkpoint_files(),
        code=["pipeline/study/baseline.py", "pipeline/engine/prompts.py"],
    output:
        "results/baseline/hf_p{prompt_len}.json",
    params:
        checkpoint=get_checkpoint_param,
        gen_len=config["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        timeout=get_timeout_prefix(),
    threads: get_baseline_threads
    resources:
        bench=1,
    log:
        "results/logs/baseline/hf_p{prompt_len}.log",
    benchmark:
        "results/logs/benchmarks/baseline/hf_p{prompt_len}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} python -m pipeline baseline --checkpoint {params.checkpoint}"
        " --prompt-len {wildcards.prompt_len} --gen-len {params.gen_len} --iters {params.iters}"
        " --warmup {params.warmup} --threads {threads} --out {output} > {log} 2>&1"


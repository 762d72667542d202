# Sourced by the COVIDx scripts (run from the project root): build the five split lists that
# --dataset Covid reads, when none are in the list folder, from the COVID-Net label files the
# project carries (data/covidnet_labels/, see its README.md), with tools/prepare_covidx.py.
# Lists already there (the original's, or built earlier) are used as they are.
# Other COVIDx versions: COVIDX_TRAIN_LABELS and COVIDX_TEST_LABELS name other label files; the
# count check below holds for the shipped files only, so it is left out for others.
COVIDX_TRAIN_LABELS_SHIPPED=data/covidnet_labels/train_COVIDx7B.txt
COVIDX_TEST_LABELS_SHIPPED=data/covidnet_labels/test_COVIDx7B.txt
# The original's counts (datasets/README.md): healthy 10,031, mixed 5,233 (1,570
# COVID-positive), test 100 + 100. The tool reaches them from COVIDx 7B by leaving whole patients
# holding 100 positive and 100 negative training images out, as the original's lists leave 100 +
# 100 out; the images in each set are the tool's seeded, patient-disjoint draw, not the original's.
COVIDX_COUNTS_SHIPPED=10031,5233,100,100  # healthy, mixed, test negative, test positive
COVIDX_LEAVE_OUT=100

ensure_covid_lists() {
    local dir=$1 name
    for name in train_neg train_pos train_neg_mixed test_neg test_pos; do
        [ -e "$dir/$name.pickle" ] || break
        [ "$name" = test_pos ] && return 0
    done
    local train=${COVIDX_TRAIN_LABELS:-$COVIDX_TRAIN_LABELS_SHIPPED}
    local test=${COVIDX_TEST_LABELS:-$COVIDX_TEST_LABELS_SHIPPED}
    local expect=()
    if [ "$train" = "$COVIDX_TRAIN_LABELS_SHIPPED" ] && [ "$test" = "$COVIDX_TEST_LABELS_SHIPPED" ]
    then
        expect=(--expect_counts "$COVIDX_COUNTS_SHIPPED")
    fi
    python tools/prepare_covidx.py --train_labels "$train" --test_labels "$test" \
        --train_leave_out "$COVIDX_LEAVE_OUT" --lists_out "$dir" ${expect[@]+"${expect[@]}"}
}
